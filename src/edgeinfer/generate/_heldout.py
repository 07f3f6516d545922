"""A few kilobytes of plain English prose, written for edgeinfer, never seen in training.

The default held-out text of :mod:`edgeinfer.generate.quality`: the perplexity of a
quantized language model on it, against the float model's, gates ``edgeinfer optimize`` on
a generative bundle. Everyday subjects in ordinary sentences, so that a small general
model finds it neither trivial nor foreign.
"""

from __future__ import annotations

__all__ = ["HELDOUT_TEXT"]

HELDOUT_TEXT = """\
The market opens early on Saturday mornings, before most of the town is awake. Farmers \
arrive in old trucks and set up their tables under the plane trees, and by seven o'clock \
the square smells of bread, wet earth and strong coffee. People come for the vegetables, \
but they stay to talk. An old man who has sold apples here for forty years knows the name \
of every dog in the neighbourhood, and he keeps a tin of biscuits for them under his table.

In the spring the stalls fill with green things: lettuce, peas in their pods, bunches of \
radishes and the first thin stalks of asparagus. By the middle of summer there are tomatoes \
of every colour, and the peaches are so ripe that they have to be sold the same day. In \
autumn the tables are heavy with pumpkins, pears and walnuts, and in winter only a few \
growers come, selling potatoes, onions, honey and jars of jam made in warmer months.

A good loaf of bread needs only flour, water, salt and time. The dough is mixed in the \
evening and left to rise slowly overnight in a cool room. In the morning it is shaped, left \
to rest again, and baked in a very hot oven until the crust is dark and crackles as it \
cools. Many bakers say that patience matters more than any recipe, because the same dough \
behaves differently on a warm day than on a cold one.

The river runs along the edge of the town and has flooded it three times in the last \
century. After the worst flood, the town built a long stone wall and planted willows along \
the bank to hold the soil. Today children fish from the wall in the evening, and in summer \
families carry blankets down to the meadow on the far side to watch the sun go down behind \
the hills. Herons stand in the shallows without moving, waiting for a fish to come close.

Learning a musical instrument as an adult is slow, and it is easy to become discouraged. \
Teachers often suggest practising for a short time every day rather than for hours once a \
week. The fingers learn through repetition, and progress that seems invisible from one day \
to the next becomes obvious after a month. Playing simple songs with other people, even \
badly, keeps many beginners from giving up.

Walking in the mountains requires more planning than it seems. The weather can change \
within an hour, and a clear morning may turn into an afternoon of cold rain and fog. \
Experienced walkers carry warm clothes, water, food and a map even on short routes, and \
they tell someone where they are going. They also know when to turn back: the summit will \
still be there next year, but a tired walker on a steep path in the dark is in real danger.

The library on the corner was once a bank, and its reading room still has the high \
windows and marble floor of the old banking hall. On weekday afternoons it is full of \
students preparing for examinations, retired people reading newspapers and parents with \
small children in the picture book corner. The librarian says that the most borrowed books \
are not novels but cookery books and guides to repairing things around the house.

Good sleep depends on habits more than on any single trick. Going to bed and getting up at \
the same times, keeping the bedroom dark and cool, and avoiding bright screens late in the \
evening all help. Coffee in the afternoon can keep some people awake for hours without \
their noticing. A short walk outside in the morning light tells the body that the day has \
begun, which makes it easier to feel tired when night comes.

When the power failed during the storm, the whole street went quiet. Without the hum of \
refrigerators and the glow of televisions, neighbours came out onto their steps with \
candles and torches. Someone lit a small stove and made tea for everyone, and for a few \
hours people who had lived next to each other for years talked as if they had just met. \
When the lights came back on near midnight, more than one of them felt a little sorry.

A bicycle that is looked after will last for decades. The chain should be cleaned and oiled \
every few weeks, the tyres kept at the right pressure, and the brakes checked before every \
long ride. Most repairs need only a few simple tools and some patience, and learning to fix \
a puncture at the side of the road is a skill that every cyclist eventually needs.
"""
