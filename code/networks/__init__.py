"""Pure torch modules: tensors in, tensors out, device chosen by the caller."""
