"""The words the task generator draws queries and responses from.

Kept apart from the rules (``grm.tasks.rules``): changing a word list changes which tasks
are drawn, never how a response is scored.
"""

TOPICS = ("sea", "city", "forest", "winter", "river", "garden", "moon", "train", "kitchen",
           "market", "mountain", "village", "desert", "harbor", "library", "bridge")
KEYWORDS = ("blue", "quiet", "bright", "green", "golden", "cold", "warm", "gentle", "dark",
             "calm", "wild", "silver", "soft", "busy", "small", "brave")  # include/avoid words
FILLERS = ("very", "so", "still", "always", "often", "today", "again", "now", "here", "really",
            "truly", "and", "also", "just", "quite", "rather", "more", "never")
VERBS = ("is", "looks", "feels", "seems", "stays", "grows")
CATEGORIES = {
    "colors": ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink",
               "brown", "gray", "gold"),
    "animals": ("cat", "dog", "horse", "lion", "tiger", "bear", "wolf", "fox", "mouse", "goat",
                "sheep", "deer"),
    "fruits": ("apple", "pear", "plum", "grape", "lemon", "mango", "peach", "cherry", "melon",
               "banana", "lime", "kiwi"),
    "birds": ("owl", "crow", "eagle", "hawk", "duck", "swan", "robin", "finch", "dove", "parrot",
              "goose", "heron"),
    "tools": ("hammer", "saw", "drill", "wrench", "chisel", "ruler", "shovel", "rake", "axe",
              "pliers", "knife", "ladder"),
    "vegetables": ("carrot", "potato", "onion", "pea", "bean", "leek", "kale", "corn", "radish",
                   "celery", "turnip", "beet"),
}
# Phrases put before the number in an A+B answer, by their length in words.
SUM_PREFIXES = {
    1: ("so", "total", "exactly", "answer"),
    2: ("it is", "that makes", "total is", "sum is"),
    3: ("the sum is", "the answer is", "that makes exactly", "the total is"),
    4: ("{a} plus {b} is", "i think it is", "so the sum is", "the result is exactly"),
    5: ("{a} plus {b} makes exactly", "i am sure it is", "adding {a} and {b} gives"),
    6: ("if you add them you get", "adding {a} and {b} gives exactly", "i believe the sum must be"),
    7: ("when you add them the sum is", "i am quite sure the total is", "{a} and {b} added together make exactly"),
}
HEADS = {
    "sentence": ("Write a sentence about the {subject}.", "Describe the {subject} in one sentence.",
                 "Say something about the {subject}."),
    "list": ("Name some {subject}.", "List a few {subject}.", "Give me some {subject}."),
    "sum": ("What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."),
}
