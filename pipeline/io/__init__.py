"""Video and image I/O: the FFmpeg binary, probing, decoding, encoding, finding videos, reading image files."""
