"""Input pipeline: videos -> faces -> forgeries -> TFDS ArrayRecord -> grain batches."""
