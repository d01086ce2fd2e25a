"""What the CUDA tests share: prompts and a tiny Llama's shape, whose HF greedy tokens are the reference."""
PROMPTS = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs " * 3,
           "sphinx of black quartz, judge my vow! " * 2, "hi", "how vexingly quick daft zebras jump",
           "a", "0123456789" * 5, "lorem ipsum dolor sit amet", "zz" * 20, "hello world " * 6]
SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2)
