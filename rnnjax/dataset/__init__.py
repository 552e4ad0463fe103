"""The text a model reads: the bundled corpora and files (text), the character vocabulary
(vocab), and the token stream cut into minibatches and held-out windows (data)."""
