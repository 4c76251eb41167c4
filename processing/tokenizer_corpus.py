"""The default training text of the project tokenizer: everything the synthetic task can say, plus a small English
sample so that ordinary text gets sensible merges too (what ``scripts/train_tokenizer.py`` uses without --input)."""

from __future__ import annotations

from collections.abc import Iterator

from .synthetic import corpus_texts

# A small hand-written English sample (plus punctuation, digits and symbols) so that ordinary text gets sensible
# merges too, not only the synthetic task's words. Kept short so task words dominate the 1024-token budget.
ENGLISH_SAMPLE: tuple[str, ...] = (
    "You are a helpful assistant. Answer the question about the image in a few words.",
    "The quick brown fox jumps over the lazy dog. A small model can still learn simple things if the data is clean.",
    "This is a picture of a cat sitting on a table next to a cup of coffee and an open book.",
    "There are two people walking in the park, and one of them is holding a red umbrella.",
    "Please describe the image in detail. What do you see? Is there anything unusual about it?",
    "I think the answer is yes, but I am not completely sure. Could you show me another example?",
    "The weather today is sunny with a light wind from the north; tomorrow it will probably rain.",
    "Language models predict the next token given the previous tokens. Vision encoders turn images into features.",
    "We trained the model for 3 epochs with a learning rate of 0.001 and a batch size of 32 on 1 GPU.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 42 100 256 1024 2024 3.14 -7 +5 50% $9.99",
    "Punctuation and symbols: , . ; : ! ? ' \" ( ) [ ] { } < > / \\ | @ # $ % ^ & * - _ + = ~ `",
    "The letters of the alphabet are A B C D E F G H I J K L M N O P Q R S T U V W X Y Z and "
    "a b c d e f g h i j k l m n o p q r s t u v w x y z.",
    "It was a bright cold day in April. She opened the window, looked at the garden and smiled.",
    "Where is the station? Go straight ahead, then turn left at the second street and it is on your right.",
    "How many apples are on the plate? There are five apples: three green ones and two yellow ones.",
    "What time is it? It is half past seven in the morning, so we still have time for breakfast.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5\n",
    "Hello, world! Thank you very much. Good morning, good evening and good night.",
    "The objects in the image are arranged on a grid with three rows and three columns.",
    "Colors such as black, white, gray, brown and pink are common in photos of everyday scenes.",
)


# Frequent English words, so ordinary text falls into whole-word tokens rather than single bytes.
COMMON_WORDS = (
    "the be to of and a in that have I it for not on with he as you do at this but his by from they we say her she "
    "or an will my one all would there their what so up out if about who get which go me when make can like time no "
    "just him know take people into year your good some could them see other than then now look only come its over "
    "think also back after use two how our work first well way even new want because any these give day most us is "
    "are was were been has had did said made went got very much more many such here where why each few every both "
    "again still never always often here small large big little long short high low old young right left top bottom "
    "center middle above below under between next near far inside outside color colour shape image picture photo "
    "object thing man woman child person dog cat car house tree water food city world life hand eye head word "
    "number part place case week company system program question answer problem point fact group home room mother "
    "father friend school student teacher book story name line end side kind body face door table chair window "
    "light open close start stop run walk read write play move live believe hold bring happen sit stand lose pay "
    "meet include continue set learn change lead understand watch follow create speak allow add spend grow offer "
    "remember love consider appear buy wait serve die send expect build stay fall cut reach kill remain please "
    "yes hello thanks thank sorry today tomorrow yesterday morning evening night white black gray brown pink"
).split()


def default_training_texts() -> Iterator[str]:
    """The default corpus: all text the synthetic task can produce, plus a small English sample.

    The English part is yielded twice so its words clear the trainer's ``min_frequency=2``; the task's own text is
    far more frequent, so its words still get their merges first.
    """
    yield from corpus_texts()
    for _ in range(2):
        yield from ENGLISH_SAMPLE
        yield " ".join(COMMON_WORDS)


__all__ = ["COMMON_WORDS", "ENGLISH_SAMPLE", "default_training_texts"]
