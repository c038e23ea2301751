"""The Markdown sections the benchmark scripts write (BENCHMARKS.md, a docs page): each script's
block lies between its own start and end marker lines and is replaced in place, or added under
the script's title when the document has neither marker."""

SUITE = "## The suite (`benchmarks/run.py`)"


def replace_section(doc, start, end, text, title, before=SUITE):
    """`doc` with the block between the whole lines `start` and `end` replaced by `text`; when it
    has neither, the section (`title`, then the block) added before the heading `before` (else at
    the end). A marker quoted inside a line is text. Raises ValueError for one marker without the
    other, or the two in the wrong order."""
    lines = doc.splitlines(keepends=True)
    marks = [i for i, line in enumerate(lines) if line.strip() in (start, end)]
    block = f"{start}\n{text}{end}\n"
    if len(marks) == 2 and lines[marks[0]].strip() == start and lines[marks[1]].strip() == end:
        return "".join(lines[: marks[0]]) + block + "".join(lines[marks[1] + 1:])
    if marks:
        raise ValueError(f"the document has one of the markers {start} / {end} without the other, or them in the wrong order")
    section = f"{title}\n\n{block}\n"
    if before and before in doc:
        return doc.replace(before, section + before, 1)
    return doc.rstrip() + "\n\n" + section


def write_section(path, start, end, text, title, before=SUITE):
    """`replace_section` on the file at `path`, written atomically."""
    from keras_litenext.utils import write_text

    with open(path, encoding="utf-8") as f:
        doc = f.read()
    write_text(path, replace_section(doc, start, end, text, title, before))
