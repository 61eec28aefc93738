"""The parts that keep a conversation alive through failures and restarts."""
