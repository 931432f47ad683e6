"""handgrad's verification suite (`pytest verify`) and its helpers."""
