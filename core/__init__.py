"""The one service every entry point calls: the rules of reading and changing knowledge bases."""
