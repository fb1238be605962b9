"""TFDS builders (ArrayRecord). Importing a builder module registers its dataset name."""
