"""sdd: Safe self-Distillation of Diffusion models, as a production pipeline.

The library (this package) holds every piece of the method and its measurement; ``flows/``
only orchestrates calls into it.
"""

__version__ = "0.1.0"
