"""One file per algorithm's loss; each is a pure function of tensors."""
