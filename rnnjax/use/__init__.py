"""Using a trained run: load it and generate, score or evaluate text (run), look inside the
stack (inside), and move parameters to PyTorch and back (interop)."""
