"""A static web page that runs an exported `.tflite` file in the browser (MediaPipe Tasks, WebAssembly).

    keras-litenext web runs/my-run --out site/             # build the page (the run's int8 file)
    keras-litenext web runs/my-run/tflite/litenext_fp32.tflite --serve
    keras-litenext web --check model.tflite a.png b.jpg --out checked/

The page (plain HTML and one ES module) takes dropped or picked PNG/JPEG images, grey or RGB, and
shows the overlay with the class colours and legend, the area of each class in pixels (or a
classifier's class probabilities), the inference time and the model card from the file's metadata
and its export report. MediaPipe Tasks' JavaScript and WebAssembly come from the npm package the
lock file pins (`keras_litenext/web/package-lock.json`), fetched once, verified and cached; the
page works offline and sends nothing anywhere. --out DIR writes a folder any static host serves;
--serve serves it on 127.0.0.1 (a temporary folder without --out) and prints the URL.

--check opens the page in headless Chromium (the system's `chromium`, driven by Python
Playwright) and runs each IMAGE through the page's own code: OUT/<stem>_mask.png (the class index
per pixel, at the image's size) or OUT/<stem>_scores.json (classifier), and OUT/web_check.json with
the page's timings (--runs N: the median of N more runs per image).
"""

import argparse
import sys
import tempfile
import time

from keras_litenext.cli import args as cli


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=cli.existing_path, help="a .tflite file, or a run / export folder (its --kind file)")
    p.add_argument("images", nargs="*", type=cli.existing_file, help="images to run through the page (--check)")
    p.add_argument("--out", type=cli.output_path, help="the folder to write the page (or the --check results) into")
    p.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 and print its URL (Ctrl-C stops)")
    p.add_argument("--port", type=cli.int_range(0, 65535), default=8000, help="--serve: the port (default 8000; 0 picks a free one)")
    p.add_argument("--check", action="store_true", help="run IMAGE... through the page in headless Chromium")
    p.add_argument("--runs", type=cli.nonnegative_int, default=0, help="--check: timed runs per image after the first (default 0)")
    p.add_argument("--confidence", action="store_true",
                   help="--check: also write a segmenter's confidence masks, <stem>_confidence.npy (H x W x masks, float32)")
    p.add_argument("--kind", choices=("int8", "fp16", "fp32"), default="int8", help="which file of a folder (default int8)")
    p.add_argument("--npm-cache", type=cli.output_path, help="where the npm tarballs are cached (default ~/.cache/keras-litenext/npm)")
    return p


def _check(args):
    from keras_litenext.web import check_page

    if not args.images or not args.out:
        print("error: --check needs IMAGE... and --out DIR", file=sys.stderr)
        return 2
    report = check_page(args.source, args.images, args.out, runs=args.runs, kind=args.kind, npm_cache=args.npm_cache,
                        confidence=args.confidence)
    for row in report["images"]:
        timing = f"{row['first_ms']:.1f} ms" + (f", median {row['median_ms']:.1f} ms of {row['runs']}" if row["median_ms"] is not None else "")
        print(f"{row['image']}: {row.get('mask') or row.get('scores')} ({timing})")
    print(f"{report['browser']}; {args.out}/web_check.json")
    return 0


def main(argv=None) -> int:
    """Run the command on `argv` (default `sys.argv[1:]`); returns the exit status."""
    args = build_parser().parse_args(argv)
    from keras_litenext.web import WebError, build_page, serve

    try:
        if args.check:
            return _check(args)
        if args.images:
            print("error: images are taken with --check only", file=sys.stderr)
            return 2
        if not args.out and not args.serve:
            print("error: pass --out DIR (a folder for a static host), --serve, or both", file=sys.stderr)
            return 2
        out = args.out or tempfile.mkdtemp(prefix="litenext-web-")  # removed when --serve stops
        info = build_page(args.source, out, kind=args.kind, npm_cache=args.npm_cache)
        print(f"{out}: page for {info['source_file']} ({info['reader']}, {len(info['classes'])} classes)")
        if args.serve:
            server = serve(out, port=args.port)
            print(f"serving {out} at {server.url} (Ctrl-C stops)", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                server.close()
                if not args.out:
                    import shutil

                    shutil.rmtree(out, ignore_errors=True)
        return 0
    except WebError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
