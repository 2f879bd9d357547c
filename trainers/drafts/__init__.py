"""Study drafts for ``hpo init``: what a shipped trainer proposes for a user's own data.

A trainer offers ``train.draft_study(data, **options)``: it looks at the data (reads it,
trains nothing) and returns a :class:`Draft`: its ``trainer.args``, a search space, a
budget and an objective sized for that data, and the findings that explain them. hpo
renders the draft as a commented study file (``hpo.draft``). The options are the
``hpo init`` flags the user gave (``model``, ``text_column``, ``image_column``,
``label_column``); a hook takes only those that apply to its data. A trainer may also
offer ``train.recognises_data(data) -> bool`` so ``hpo init`` picks it for data of its
kind (an image folder, say) without ``--trainer``.

The sizing rules every task shares live in :mod:`trainers.drafts.sizing`, reading the
user's table in :mod:`trainers.drafts.table`, and each task's own part in
:mod:`trainers.drafts.text`, :mod:`trainers.drafts.image` and
:mod:`trainers.drafts.generation`.
"""

from hpo.trainers.drafts.generation import draft_causal_lm, recognises_text_data
from hpo.trainers.drafts.image import draft_image_classification, recognises_images
from hpo.trainers.drafts.sizing import SEARCH_SAMPLE, Draft
from hpo.trainers.drafts.table import check_columns, detect_label_column, read_rows
from hpo.trainers.drafts.text import draft_text_classification

__all__ = [
    "SEARCH_SAMPLE",
    "Draft",
    "check_columns",
    "detect_label_column",
    "draft_causal_lm",
    "draft_image_classification",
    "draft_text_classification",
    "read_rows",
    "recognises_images",
    "recognises_text_data",
]
