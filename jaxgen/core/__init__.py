"""Library code shared by every paper. Nothing in this package imports gin: configuration stays at the edges."""
