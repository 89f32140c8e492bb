"""Pallas kernels shared by jaxgen papers, one package per operation."""
