"""decspec: compile declarative decoding specs (.dec) into verified decoders."""
