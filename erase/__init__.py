"""Data erase: capability detection, erase methods, verification and the certificate."""
