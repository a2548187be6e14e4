"""Loss terms, vectorised torch, one class or function a term: box constraints under log-barrier
extensions, losses on (partial) label maps, the size loss with its distance transform, and the
discriminator of the adversarial loss (docs/methods.md)."""
