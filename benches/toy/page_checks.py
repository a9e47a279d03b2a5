"""The browser page test's pixel checks, on a `tav run jobs/toy.toml` output folder.

    python benches/toy/page_checks.py OUT [OUT...]

`tests/browser/page.test.mjs` checks the demo's three toy edits from their pixels; the browser
reproduces the native edits, so a model or a setting can be tried natively in seconds
(`tav run jobs/toy.toml --steps 1 --inversion-steps 3 --inference-steps 3 --out OUT` is the
test's CI setting) before the browser runs it. Same colour classes and thresholds as the test's
`colours()`: a pixel is blue when its blue channel exceeds red and green by 40, else red when
red exceeds both by 40, else grass-green when green exceeds both by 20. Prints each edit's
shares per frame and which checks pass; exits 1 when one fails. (Flash frames:
`flash_frames.py`.)
"""
import glob, os, sys

from flash_frames import frames  # same folder: a GIF's frames as an array

EDITS = ("blue", "grass", "square")  # jobs/toy.toml's edits, in order


def shares(frame):
    r, g, b = frame[..., 0], frame[..., 1], frame[..., 2]
    blue = (b > r + 40) & (b > g + 40)
    red = ~blue & (r > g + 40) & (r > b + 40)
    green = ~blue & ~red & (g > r + 20) & (g > b + 20)
    return {"blue": blue.mean(), "red": red.mean(), "green": green.mean()}


def main():
    failed = False
    for folder in sys.argv[1:]:
        gifs = sorted(glob.glob(os.path.join(folder, "0*.gif")))
        if len(gifs) != 3:
            sys.exit(f"{folder}: expected the toy job's three edits (0*.gif), found {len(gifs)}")
        blue, grass, square = ([shares(f) for f in frames(g)] for g in gifs)
        total = lambda clip, key: sum(f[key] for f in clip)
        checks = {
            "blue: a blue object in 4+ frames, blue pixels over 10x red":
                sum(f["blue"] > 0.02 for f in blue) >= 4 and total(blue, "blue") > 10 * total(blue, "red"),
            "grass: green over half the frame in 6+ frames, the red object in 6+":
                sum(f["green"] > 0.5 for f in grass) >= 6 and sum(f["red"] > 0.02 for f in grass) >= 6,
            "square: the red object in 6+ frames, every frame under 0.3 green":
                sum(f["red"] > 0.02 for f in square) >= 6 and all(f["green"] < 0.3 for f in square),
        }
        print(folder)
        for name, clip in zip(EDITS, (blue, grass, square)):
            for key in ("blue", "red", "green"):
                print(f"  {name:6} {key:5} " + " ".join(f"{f[key]:.2f}" for f in clip))
        for what, ok in checks.items():
            print(f"  {'ok  ' if ok else 'FAIL'} {what}")
            failed |= not ok
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
