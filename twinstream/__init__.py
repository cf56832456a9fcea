"""twinstream: streaming content-based image retrieval with twin (Siamese) encoders.

This package holds the CLI, the settings and the small torch-free contracts every stage shares
(preprocessing, model card, Kafka message format, encoder runtime, local stack).
"""

__version__ = "0.1.0"
