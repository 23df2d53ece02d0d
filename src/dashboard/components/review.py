"""Review: the recent predictions most worth a label (``GET /review?order=useful``: where the
model hesitates most, spread over what it sees), each labelled in one click.

A label sent with the admin token turns the prediction's kept image into a labelled upload
(split into the training or the test share like any upload), which the next retrain uses.
"""

from __future__ import annotations

import panel as pn

from dashboard.components.base import Component, clock

#: Up to this many classes get a button each; more get a menu.
MAX_BUTTONS = 12


def training_note(stored: dict) -> str:
    """What became of a label: training data (which share), a duplicate, or only recorded."""
    training = stored.get("training") or {}
    if training.get("status") == "added":
        return f"added to the **{training['split']}** share of the uploads"
    if training.get("status") == "duplicate":
        return f"the image is already in the data ({training.get('duplicate_of')})"
    return f"recorded only: {training.get('reason', 'not used for training')}"


class ReviewView(Component):
    title = "Review"

    def __init__(self, state, **params):
        super().__init__(state, **params)
        self.result = pn.pane.Markdown("")
        self.items = pn.Column()
        self.reload_button = pn.widgets.Button(label="Reload the queue", color="default")
        self.reload_button.on_click(lambda _: self.refresh())

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown(
                "### Review queue\nThe predictions most worth a label first: where the model "
                "hesitates between classes, one of each kind of doubt. Click the true class: "
                "the image becomes labelled data for the next retrain."
            ),
            pn.Row(self.reload_button),
            self.result,
            self.items,
        )

    def item_row(self, item: dict, classes: list[str]) -> pn.Row:
        """One prediction: its thumbnail, what the model said, and a button per class."""
        image = pn.pane.HTML(
            f'<img src="{item["image"]}" width="64" height="64" '
            'style="image-rendering:pixelated;border:1px solid #ccc">',
            width=76,
        )
        said = pn.pane.Markdown(
            f"**{item['label']}** ({item['confidence']:.0%})  \n{clock(item['created_at'])}",
            width=170,
        )
        if len(classes) <= MAX_BUTTONS:
            choices = [
                self._label_button(item["id"], name, name == item["label"]) for name in classes
            ]
        else:
            menu = pn.widgets.Select(options=classes, value=item["label"], width=160)
            button = pn.widgets.Button(label="Label", color="primary", width=80)
            button.on_click(lambda _: self.label(item["id"], menu.value))
            choices = [menu, button]
        return pn.Row(image, said, pn.FlexBox(*choices), name=item["id"])

    def _label_button(self, prediction_id: str, name: str, predicted: bool) -> pn.widgets.Button:
        button = pn.widgets.Button(label=name, color="success" if predicted else "light", width=60)
        button.on_click(lambda _: self.label(prediction_id, name))
        return button

    def label(self, prediction_id: str, name: str) -> None:
        stored = self.call(self.client.feedback, prediction_id, name)
        if stored is None:
            return
        verdict = "the model was right" if stored["correct"] else "a correction"
        self.result.object = f"Labelled **{name}** ({verdict}): {training_note(stored)}."
        self.items.objects = [row for row in self.items.objects if row.name != prediction_id]

    def refresh(self) -> None:
        if not self.state.token:
            self.items.objects = [
                pn.pane.Markdown("Enter the admin token in the Retrain tab to see the queue.")
            ]
            return
        queue = self.call(self.client.review)
        if queue is None:
            return
        rows = [self.item_row(item, queue["classes"]) for item in queue["items"]]
        self.items.objects = rows or [
            pn.pane.Markdown("Nothing to review: no recent prediction without a label is kept.")
        ]
