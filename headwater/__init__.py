"""headwater: which training examples drive this language model's output?"""

__version__ = "0.1.0"
