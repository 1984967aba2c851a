"""Datasets in the recipe's jsonl format: records, training examples, batching, sources."""

# How a training sample's conversation becomes the sequence it trains on each time it is seen:
# all: every turn, concatenated (the recipe's generic jsonl dataset, NLVR2, Hateful Memes, UCF-101);
# one_random: one turn drawn at random, its target one of the turn's accepted answers drawn at random
# (the recipe's DocVQA collators: `random.choice` over the mini set's answers, over the Cauldron's pairs).
TRAIN_TURNS = ("all", "one_random")
ONE_RANDOM_TURN_TASKS = ("docvqa", "docvqa_full")  # the tasks whose recipe collators draw per visit


def recipe_train_turns(task: str) -> str:
    """How the recipe's script for `task` trains a record (one of TRAIN_TURNS)."""
    return "one_random" if task in ONE_RANDOM_TURN_TASKS else "all"
