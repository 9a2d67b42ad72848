"""Wire protocols: request/response models, adapters and writers of each API family, and the
protocol-neutral request and events they map to and from. Nothing here imports the rest of
seekserve."""
