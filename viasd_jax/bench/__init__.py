"""`viasd bench`: our decoding modes and their peers on the same prompts, in one process."""
