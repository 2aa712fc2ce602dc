"""Split learning's shared pieces: where the decoder is cut, the frames the parts exchange, the gRPC channel."""
