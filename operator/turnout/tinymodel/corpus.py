"""Built-in English text the tiny model's tokenizer and weights are fitted on.

Written for this project (no third-party text). It is small on purpose: the
tokenizer needs a vocabulary of about a thousand pieces and the model only
needs enough signal to give confident, varied greedy output.
"""

from __future__ import annotations

CORPUS = """\
The harbour town woke early. Before the sun rose over the hills, the bakers had lit their ovens and
the fishing boats were already moving past the lighthouse. A small cat sat on the stone wall and watched
the gulls circle above the water. When the bell in the square rang six times, the market opened and
people came down the narrow streets with baskets and bags.

Maria sold bread, apples and honey from a green wooden cart. Her brother Tomas mended nets on the quay.
Every morning he counted the boats as they came back, and every morning he told the same story about the
storm that had carried his grandfather's boat all the way to the northern islands. Nobody minded hearing
it again. The story changed a little each time, and the children liked to guess what would be different.

In the afternoon the wind turned and the air smelled of salt and pine. The school let out, and the
children ran to the beach to look for shells. Some of them built a castle with towers and a long wall,
and they dug a channel so the sea could fill the moat. The tide came in slowly, then all at once, and
the castle was gone. They laughed and started again a little higher up the sand.

A computer is a machine that follows instructions. A program is a list of those instructions, written
in a language the machine can read. Programs can add numbers, sort lists, draw pictures, send messages
and answer questions. A good program is clear and careful: it checks its input, it handles errors, and it
tells the person using it what went wrong and how to fix it.

A server is a program that waits for requests and sends back answers. When you open a web page, your
browser sends a request to a server, and the server replies with the page. Many servers run at the same
time in a data centre. They share the work, and if one of them fails, another one takes over so that the
people using the service do not notice.

A language model reads text and predicts the next word. It breaks the text into small pieces called
tokens. Each token is turned into a list of numbers, and the model passes those numbers through many
layers. At the end it gives a score to every token in its vocabulary, and the most likely token is
chosen. Then the new token is added to the text and the model predicts again, one token at a time.

Small models are useful for testing. They load in a moment, they run on an ordinary laptop, and they
give the same answer every time when sampling is turned off. A test can start a server with a small
model, send it a question, and check that the answer has the right shape, even if the words themselves
do not make much sense.

The garden behind the house was full of tomatoes, beans and tall yellow flowers. In the summer the bees
worked from morning until evening, and the old apple tree gave shade to anyone who wanted to read. In
the autumn the leaves turned red and gold, and the family gathered the apples and stored them in the
cool cellar for the winter months.

Rivers begin as small streams high in the mountains. They join together, grow wider and slower, and
carry sand and stones down to the plains. Towns are often built where rivers meet or where a bridge can
cross. Over hundreds of years the river may change its course, leaving old channels that fill with
reeds and become home to frogs, herons and dragonflies.

To make a cup of tea, first boil fresh water. Warm the pot, add one spoon of leaves for each cup, and
pour the water over them. Wait three or four minutes, then pour the tea through a strainer. Some people
add milk, some add lemon or honey, and some drink it plain. It is best shared with a friend and a slice
of cake on a quiet afternoon.

The library on the hill had twelve rooms and a round reading hall with a glass roof. The librarian
knew where every book was kept. She could find a map of the old city, a book of songs from the islands,
or a guide to the stars in less than a minute. On rainy days the hall was full, and the only sounds
were the rain on the glass and the turning of pages.

Numbers have patterns. One, two, three, four, five, six, seven, eight, nine, ten. Two and two make
four. Ten times ten is one hundred. Half of twelve is six. An even number can be split into two equal
parts, and an odd number always leaves one left over. Prime numbers, like two, three, five, seven and
eleven, can only be divided by one and by themselves.

The weather changes with the seasons. Spring brings rain and new leaves, summer brings long warm days,
autumn brings wind and fog, and winter brings frost and sometimes snow. Farmers watch the sky closely,
because a late frost or a dry summer can change the size of the harvest. Sailors watch the clouds and
the shape of the waves.

Hello! How are you today? I am well, thank you. What would you like to talk about? We could talk about
the sea, the weather, books, numbers or computers. Please ask me a question and I will try to answer it
as clearly as I can. If I do not know the answer, I will say so.

When the evening came, the lamps along the harbour were lit one by one. The boats rocked gently at their
moorings, and the smell of supper drifted from open windows. Maria closed her cart, Tomas folded his
nets, and the cat walked slowly home along the top of the wall. Somewhere a radio was playing an old
song, and the first stars appeared above the lighthouse.
"""

# Short questions paired with answers taken from the corpus; they teach the
# model the chat format, including ending its turn with the end token.
CHAT_PAIRS: tuple[tuple[str, str], ...] = (
    ("Hello!", "Hello! How are you today?"),
    ("What is a server?", "A server is a program that waits for requests and sends back answers."),
    ("What is a computer?", "A computer is a machine that follows instructions."),
    ("What does a language model do?", "A language model reads text and predicts the next word."),
    ("Why are small models useful?", "Small models are useful for testing. They load in a moment."),
    ("How do I make tea?", "To make a cup of tea, first boil fresh water."),
    ("What is two and two?", "Two and two make four."),
    ("Tell me about the harbour.", "The harbour town woke early."),
    ("Tell me about rivers.", "Rivers begin as small streams high in the mountains."),
    ("What is a prime number?", "Prime numbers can only be divided by one and by themselves."),
    ("What is the weather like?", "The weather changes with the seasons."),
    ("Tell me a story.", "Maria sold bread, apples and honey from a green wooden cart."),
)
