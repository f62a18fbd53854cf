"""Fixtures that start real emulator servers on 127.0.0.1 (moto for S3/R2)."""
