"""The models: encoders, MSCL's losses, FAME, the MSCL module with its queues."""
