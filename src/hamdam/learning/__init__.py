"""Learning from chats: the durable chat store (and, next, retrain rounds)."""
