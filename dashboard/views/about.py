"""How to read this dashboard: the defense in plain words, and a glossary."""

from __future__ import annotations

import streamlit as st

from poisonlens.dashboard.common import GLOSSARY, page_header, run_picker_ui

PAGE = {"title": "How to read this", "icon": ":material/help:", "order": 90}

page_header("How to read this", "What the defense does, in plain words, and what each page shows.")
st.markdown("""
**The threat.** In *data poisoning* an attacker slips a few altered images (the *poisons*) into a training set so
that the trained model misclassifies one chosen test image (the *target*) as a class of the attacker's choice,
while staying accurate on everything else.

**The defense (EPIC, Yang, Liu & Mirzasoleiman, ICML 2022).** Every few epochs (every *T* epochs) the trainer
takes a *gradient snapshot*: for each training example, how the model's last layer would change to fit it
(g = softmax − one-hot label). Within each class, EPIC picks a small set of *medoids* that best stand for all the
others (facility location). Each example belongs to the cluster of its most similar medoid. A medoid whose
cluster holds only itself is *isolated*: its gradient is unlike any other example of its class. EPIC drops
isolated examples from training for good, on the theory that poisons are such outliers.

**Is that theory true on this run?** Often not: in small experiments poisons were *no more isolated than clean
examples*, and the defense dropped poisons at about the rate it dropped any example. The dashboard is built to show
that honestly: the **Overview** compares the share of poisons dropped with the share of all examples dropped (what
a random drop of the same size would catch), and the **Drift** page compares poisons with clean examples.

**The pages.**
- **Overview**: accuracy, the attack, how many examples and poisons were dropped, and where the time went.
- **Gradient space**: a map of every example's gradient at one snapshot; play through the epochs, select examples.
- **Drift**: how far poisons (and examples you select) sit from their class, and how close to the target.
- **Suspects**: the ranked list of dropped or flagged examples, downloadable as CSV. Each dropped example is
  ranked by the score the defense gave it at the snapshot that dropped it.
- **Compare**: several runs side by side, one bar per defense: how often the attack worked, clean accuracy,
  and how many poisons each defense dropped against what a random drop of the same size would catch
  (from `poisonlens evaluate`, or runs you pick).
- **New run**: start a training run in the background.
""")
st.markdown("##### Words used here")
run_picker_ui()
for word, meaning in GLOSSARY.items():
    st.markdown(f"- **{word}**: {meaning}")
