"""Core ML storage: ``blob`` reads and writes weight.bin without coremltools."""
