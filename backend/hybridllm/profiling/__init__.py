"""Profiling: measures this machine's HardwareProfile by timing the real kernels and executors
(above runtime/, which it drives), and stores profiles on disk. The policy layer only reads them."""
