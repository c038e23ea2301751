"""Class lists (`classes.json`) and colour palettes of a segmentation dataset."""

import json
import os

CLASSES_FILE = "classes.json"


def read_classes_json(data_dir):
    """Class names from `<data_dir>/classes.json` (`{"0": "background", "1": ...}`), or None.

    Raises:
        ValueError: a malformed file, or indices that are not exactly 0..K-1.
    """
    if not data_dir:
        return None
    path = os.path.join(data_dir, CLASSES_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if isinstance(raw, list):
            raw = {str(i): n for i, n in enumerate(raw)}
        names = {int(k): str(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"{path}: not a class list like {{\"0\": \"background\", \"1\": \"lesion\"}} ({err})") from None
    if sorted(names) != list(range(len(names))) or len(names) < 2:
        raise ValueError(f"{path}: class indices must be 0..K-1 with K >= 2, got {sorted(names)}")
    return [names[i] for i in range(len(names))]


def read_palette(path):
    """A palette JSON (`{"255,0,0": 1, "#00ff00": 2, ...}`) as `{(r, g, b): class}`."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        palette = {}
        for colour, index in raw.items():
            text = str(colour).strip()
            if text.startswith("#") and len(text) == 7:
                rgb = tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
            else:
                rgb = tuple(int(v) for v in text.replace(" ", "").split(","))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError(f"colour {colour!r} is not r,g,b or #rrggbb")
            palette[rgb] = int(index)
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"{path}: not a palette like {{\"255,0,0\": 1, \"#00ff00\": 2}} ({err})") from None
    return palette
