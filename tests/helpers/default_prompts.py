"""Prompts and greedy settings the default-model parity tests share."""
from hybridllm import SamplingParams

PROMPTS = [
    "Hi",
    "Once upon a time, there was a little",
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "List three colours: red,",
    "In 1969, Neil Armstrong",
    "The quick brown fox jumps over the lazy dog. " * 6 + "Then the fox",
    ("Photosynthesis is the process by which green plants and some other organisms use sunlight to "
     "synthesize foods from carbon dioxide and water. " * 5) + "In summary, photosynthesis",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,",
]
N = 32
GREEDY = SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=True)
