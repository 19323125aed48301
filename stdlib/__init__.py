"""decspec's standard library: the components a spec can name, and reference models."""
