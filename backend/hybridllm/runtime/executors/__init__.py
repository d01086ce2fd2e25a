"""One executor per policy, by the policy table's names; each module's `build(parts)` makes it."""
from . import cpu_only, gpu_offload, gpu_only, neo, partition

BUILDERS = {
    "gpu_only": gpu_only.build,
    "gpu_offload": gpu_offload.build,
    "cpu_only": cpu_only.build,
    "partition": partition.build,
    "neo": neo.build,
}
