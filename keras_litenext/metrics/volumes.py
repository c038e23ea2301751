"""Per-volume totals of per-slice areas (DICOM/NIfTI slices of one volume)."""


def volumes(stems, per_image, thickness):
    """Per-volume totals of the per-image areas (`per_image_scores(..., areas=True)`): the slices
    of a volume are the stems ``<volume>#<slice>`` (`keras_litenext.data.medical`), each area times its slice
    thickness; in millilitres when areas are in mm² and thicknesses in mm.

    Args:
        stems: the stem of every image, in the order of `per_image`'s lists.
        per_image: `{"area_true": [...], "area_pred": [...], ...}` (per class: `area_true_<class>`).
        thickness: `{stem: slice thickness}`; volumes with a slice of unknown thickness are left out.

    Returns:
        `{volume: {"slices": n, "<key>_ml": value, ...}}`, one `true`/`pred` pair per area key
        (`area_true` -> `true_ml`, `area_pred_<class>` -> `pred_<class>_ml`).
    """
    keys = [k for k in per_image if k.startswith(("area_true", "area_pred"))]
    out = {}
    for i, stem in enumerate(stems):
        volume, sep, _ = str(stem).partition("#")
        if not sep:
            continue
        entry = out.setdefault(volume, {"slices": 0, **{k: 0.0 for k in keys}})
        dz = thickness.get(stem)
        if entry.get("unknown") or dz is None:
            entry["unknown"] = True
            continue
        entry["slices"] += 1
        for k in keys:
            entry[k] += float(per_image[k][i]) * float(dz)
    result = {}
    for volume, entry in out.items():
        if entry.pop("unknown", False):
            continue
        result[volume] = {"slices": entry.pop("slices"),
                          **{k.replace("area_", "") + "_ml": round(v / 1000.0, 6) for k, v in entry.items()}}
    return result
