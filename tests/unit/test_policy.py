"""Policy module: tables, profiles, cost model and planner, as tables of cases."""
import json
import math

import pytest

from hybridllm.policy import BatchShape, CostModel, HardwareProfile, ModelShape, PlanError, Planner, Table2D
from hybridllm.policy.reference import SPECS, build, reference_profile
from hybridllm.profiling.store import PROFILE_DIR, load_profile, save_profile

from ..helpers.profiles import const, synthetic


MODEL = ModelShape("m", num_layers=10, hidden=1024, num_heads=8, num_kv_heads=8, head_dim=128,
                   intermediate=4096, vocab=1000)


# -- tables --------------------------------------------------------------------

def test_table_hits_grid_points_and_follows_power_laws_between_them():
    fn = lambda x, y: 3e-6 * x ** 0.8 * y ** 1.3          # noqa: E731
    t = Table2D.from_function((1, 8, 64, 512), (10, 1000, 1e5), fn, "t")
    assert t(8, 1000) == pytest.approx(fn(8, 1000), rel=1e-12)
    for x, y in [(3, 50), (100, 2e4), (700, 3e5), (0.5, 5)]:   # inside and outside the grid
        assert t(x, y) == pytest.approx(fn(x, y), rel=1e-9)
    assert t(0, 10) == 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=(1, 1), y=(1,), seconds=((1,), (1,))), "t.x: points must be strictly increasing"),
    (dict(x=(0,), y=(1,), seconds=((1,),)), r"t.x: every point must be a finite number > 0"),
    (dict(x=(1,), y=(1, 2), seconds=((1,),)), "t.seconds: must be 1 rows of 2 values"),
    (dict(x=(1,), y=(1,), seconds=((-1,),)), "t.seconds: every value must be a finite time > 0"),
])
def test_table_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Table2D(**kwargs, name="t")


# -- profiles ------------------------------------------------------------------

def test_profile_json_round_trip(tmp_path):
    p = synthetic()
    save_profile(p, tmp_path / "p.json")
    assert [f.name for f in tmp_path.iterdir()] == ["p.json"]      # no temporary file left beside it
    back = load_profile(tmp_path / "p.json")
    assert back.to_dict() == p.to_dict()
    assert back.host_attention("decode", "f32")(3, 4) == pytest.approx(5e-3)


@pytest.mark.parametrize("field, value, match", [
    ("h2d_pinned", 0, "h2d_pinned must be a bandwidth > 0"),
    ("d2h_pageable", -5.0, "d2h_pageable must be a bandwidth > 0"),
    ("host_memory_bandwidth", float("nan"), "host_memory_bandwidth must be a bandwidth > 0"),
    ("device_memory_bytes", 0, "device_memory_bytes must be an integer > 0"),
])
def test_profile_rejects_bad_numbers_by_name(tmp_path, field, value, match):
    d = synthetic().to_dict()
    d[field] = value
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match):
        load_profile(tmp_path / "p.json")


def test_profile_missing_fields_are_named():
    d = synthetic().to_dict()
    del d["d2h_pinned"], d["host_gemm"]
    with pytest.raises(ValueError, match="missing field.*d2h_pinned, host_gemm"):
        HardwareProfile.from_dict(d)
    d = synthetic().to_dict()
    del d["device_gemm"]["seconds"]
    with pytest.raises(ValueError, match="device_gemm.seconds: missing"):
        HardwareProfile.from_dict(d)


def test_shipped_reference_profiles_are_labelled_and_match_their_specs():
    for spec in SPECS:
        assert reference_profile(spec.name).to_dict() == build(spec).to_dict()
        shipped = load_profile(PROFILE_DIR / f"{spec.name}.json")     # the JSON copies are current
        assert shipped.source == "spec" and "NOT MEASURED" in shipped.notes
        assert shipped.to_dict() == json.loads(json.dumps(build(spec).to_dict()))
    assert len(list(PROFILE_DIR.glob("*.json"))) == len(SPECS)
    with pytest.raises(ValueError, match="no reference profile 'v100'"):
        reference_profile("v100")


# -- cost model ----------------------------------------------------------------

def test_gpu_only_prefill_is_the_sum_of_its_parts():
    cm = CostModel(synthetic())
    e = cm.estimate("gpu_only", "prefill", MODEL, BatchShape(2, 100, 10))
    # 10 layers x (4 GEMMs + attention) + the LM head
    assert e.seconds == pytest.approx(10 * (4 * 1e-3 + 4e-3) + 1e-3)
    assert e.transfer_s == 0 and e.feasible


def test_decode_takes_output_len_minus_one_steps():
    cm = CostModel(synthetic())
    e = cm.estimate("cpu_only", "decode", MODEL, BatchShape(1, 100, 33))
    assert e.seconds == pytest.approx(32 * (10 * (4 * 5e-3 + 5e-3) + 5e-3))
    assert e.device_bytes == 0


def test_gpu_offload_overlaps_transfer_with_compute_per_layer():
    cm = CostModel(synthetic())
    e = cm.estimate("gpu_offload", "decode", MODEL, BatchShape(1, 10, 2))
    xfer = MODEL.layer_weight_bytes / 1e9                   # per layer, h2d pinned at 1 GB/s
    compute = 4 * 1e-3 + 2e-3                                # per layer
    assert xfer > compute
    assert e.transfer_s == pytest.approx(10 * xfer)
    assert e.seconds == pytest.approx(10 * xfer + 10 * compute + 1e-3 - 9 * compute)
    assert e.transfer_s / e.seconds > 0.85                   # FlexInfer's PCIe-bound regime


def test_gpu_offload_on_a_cpu_only_machine_does_not_overlap():
    cm = CostModel(synthetic(device_is_host=True))
    e = cm.estimate("gpu_offload", "decode", MODEL, BatchShape(1, 10, 2))
    assert e.overlap_s == 0 and e.seconds == pytest.approx(e.compute_s + e.transfer_s)


def test_partition_moves_qkv_down_and_output_up_each_layer():
    cm = CostModel(synthetic())
    e = cm.estimate("partition", "decode", MODEL, BatchShape(4, 10, 2))
    qkv = 4 * (8 + 16) * 128 * 4
    out = 4 * 8 * 128 * 4
    assert e.transfer_s == pytest.approx(10 * (qkv + out) / 1e9)
    # Activations of a 4-token step: 4 x (4 hidden + 2 intermediate + q/k/v) f32, plus 4 rows of f32 logits.
    act = 4 * (4 * 1024 + 2 * 4096 + (8 + 16) * 128) * 4 + 4 * 1000 * 4
    assert e.device_bytes == MODEL.weight_bytes + act
    piped = CostModel(synthetic()).estimate("neo", "decode", MODEL, BatchShape(4, 10, 2))
    assert piped.seconds < e.seconds and piped.overlap_s > 0


def test_memory_limits_make_policies_infeasible_with_numbers():
    small = synthetic(device_memory_bytes=MODEL.weight_bytes // 2)
    e = CostModel(small).estimate("gpu_only", "decode", MODEL, BatchShape(1, 10, 2))
    assert not e.feasible and "GiB of device memory" in e.why_not and "available" in e.why_not
    assert CostModel(small).estimate("gpu_offload", "decode", MODEL, BatchShape(1, 10, 2)).feasible


# -- planner -------------------------------------------------------------------

@pytest.mark.parametrize("over, expect", [
    ({}, ("gpu_only", "gpu_only")),
    # Device attention far slower than host attention: decode moves to partition, prefill stays.
    ({"device_attention_decode": const(1.0)}, ("gpu_only", "partition")),
    # Weights do not fit on the device: stream them, or stay on the host.
    ({"device_memory_bytes": 2**24, "host_gemm": const(1e-4)}, ("cpu_only", "cpu_only")),
    ({"device_memory_bytes": 2**28, "h2d_pinned": 1e12, "d2h_pinned": 1e12}, ("gpu_offload", "gpu_offload")),
])
def test_planner_picks_fastest_feasible_pair(over, expect):
    plan = Planner(MODEL, synthetic(**over)).plan(BatchShape(4, 64, 16))
    assert (plan.prefill.policy, plan.decode.policy) == expect
    feasible = [e for e in plan.estimates if e.feasible]
    for phase, chosen in (("prefill", plan.prefill), ("decode", plan.decode)):
        # no single feasible policy beats the choice by more than the KV hand-over it saves
        best = min(e.seconds for e in feasible if e.phase == phase)
        assert chosen.seconds <= best + plan.switch_s + 1e-12


def test_planner_charges_the_kv_hand_over_between_tiers():
    prof = synthetic(device_attention_decode=const(1.0))
    plan = Planner(MODEL, prof).plan(BatchShape(4, 64, 16))
    assert plan.switch_s == pytest.approx(4 * 64 * MODEL.kv_bytes_per_token(4) / 1e9)
    assert plan.seconds == pytest.approx(plan.prefill.seconds + plan.switch_s + plan.decode.seconds)


def test_no_feasible_policy_says_what_each_needs():
    prof = synthetic(device_memory_bytes=2**20, host_memory_bytes=2**20)
    with pytest.raises(PlanError) as e:
        Planner(MODEL, prof).plan(BatchShape(1, 10, 2))
    msg = str(e.value)
    for policy in ("gpu_only", "gpu_offload", "cpu_only", "partition"):
        assert f"{policy} prefill: needs" in msg
    assert "available" in msg


def test_reference_plans_prefer_offload_prefill_and_host_decode_for_opt66b_on_h100():
    opt = ModelShape("opt-66b", 64, 9216, 72, 72, 128, 36864, 50272, 2, 2, gated_mlp=False)
    plan = Planner(opt, reference_profile("h100-sxm-spr")).plan(BatchShape(1, 1024, 32, "bf16"))
    by = {(e.policy, e.phase): e for e in plan.estimates}
    assert not by[("gpu_only", "decode")].feasible           # 132 GB of weights on an 80 GB GPU
    e = by[("gpu_offload", "decode")]
    assert e.transfer_s / e.seconds > 0.85
    assert plan.seconds < by[("gpu_offload", "prefill")].seconds + by[("gpu_offload", "decode")].seconds
    assert math.isfinite(plan.seconds)
