"""Terminal progress for training and prediction events: a tqdm bar on stderr, optional JSON lines."""

from __future__ import annotations

import json
import sys

from WeakSegLib import events


class ProgressPrinter:
    """Shows the events (:mod:`WeakSegLib.events`) of any trainer (segmentation recipes, the box
    tightener) as a tqdm progress bar on stderr and warnings as lines; optionally appends every event
    but ``batch`` as JSON lines to a file."""

    def __init__(self, events_path: str | None = None, quiet: bool = False) -> None:
        self.bar = None
        self.quiet = quiet
        self.events_file = open(events_path, "a", encoding="utf-8") if events_path else None

    def __call__(self, event: dict) -> None:
        if self.events_file is not None and event["event"] != events.BATCH:
            self.events_file.write(json.dumps(event) + "\n")
            self.events_file.flush()
        if self.quiet:
            return
        from tqdm import tqdm

        kind = event["event"]
        if kind == events.START and "epochs" in event:
            self.bar = tqdm(total=event["epochs"], initial=event["first_epoch"] - 1, unit="epoch",
                            desc=event.get("recipe", event.get("kind", "train")), file=sys.stderr,
                            dynamic_ncols=True)
        elif kind == events.EPOCH and self.bar is not None:
            shown = {"loss": f"{event['loss']:.4g}"}
            for key, name in (("dice", "dice"), ("val_accuracy", "val acc")):
                if key in event:
                    shown[name] = f"{event[key]:.3f}"
            self.bar.set_postfix(shown)
            self.bar.update(1)
        elif kind == events.WARNING:
            print(f"warning: {event['message']}", file=sys.stderr)
        elif kind in (events.DONE, events.CANCELLED) and self.bar is not None:
            self.bar.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.events_file is not None:
            self.events_file.close()
