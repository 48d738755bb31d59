"""The Train tab: data set, settings, Start/Stop, live curves and progress."""
from __future__ import annotations

import html
import os
import time
from types import SimpleNamespace
from typing import Any

import gradio as gr

from blocks import edit
from lab.datasets import DATASETS, DatasetError, dataset_help
from lab.serve import session as sess
from lab.serve import zerogpu
from lab.serve.limits import LimitError, Limits
from lab.serve.session import Session
from lab.train.device import available_devices, device_name
from ui.build import build_views
from ui.common import (UPLOAD, curves, get_session, keeps_outputs, md_text, one_line, progress_html,
                       run_updates, spec_of, to_int, user_errors)

# The curves are redrawn at most every CURVE_EVERY_S (and once at the end): each redraw costs
# the page a Plotly update, and a redraw twice a second made the page busier than the trainer.
CURVE_EVERY_S = 2.0
PROGRESS_EVERY_S = 1.0       # the progress bar and its text, between redraws
WATCH_CHOICES = [("none", "none"), ("Grad-CAM", "gradcam"), ("CBAM spatial map", "cbam"),
                 ("SE excitation", "se"), ("feature grid (last layer)", "features"),
                 ("Ghost redundancy", "ghost")]


def watch_request(spec: dict, view: Any, index: Any) -> dict | None:
    """{"view", "index"} to watch, None for "none"; the view must be one this network has."""
    if view in (None, "", "none"):
        return None
    import blocks
    from visual.watch import WATCH_NAMES, watch_views
    offered = watch_views(blocks.build(spec, device="meta"))
    if view not in offered:
        raise gr.Error(f"This network has no {WATCH_NAMES.get(view, view)} to watch; it offers "
                       f"{', '.join(WATCH_NAMES[v] for v in offered)}.")
    return {"view": view, "index": to_int(index, "watched image")}


def watch_plot(events: list[dict], shown: int, image: Any = None) -> tuple[Any, int]:
    """(the watch figure when a new snapshot arrived, else gr.skip(); snapshots drawn)."""
    snaps = [e for e in events if e.get("type") == "watch"]
    if len(snaps) == shown:
        return gr.skip(), shown
    from visual.watch import watch_figure
    return watch_figure(snaps, image=image).figure, len(snaps)


def _watched_image(s: Session, settings: Any, train_size: int | None, index: int) -> Any:
    """The watched test image (uint8 C×H×W) from the session's cached data set, or None."""
    try:
        ds = s.dataset(settings.dataset, settings.seed, train_size or sess.default_train_size(settings.dataset),
                       sess.default_test_size(settings.dataset), settings.data_root)
        return ds.test_x[index]
    except Exception:   # noqa: BLE001 - the picture is a nicety; the map is drawn without it
        return None


def dataset_meta(dataset: str, upload: Any = None, session: Session | None = None):
    """(input shape, classes) of a data set choice; loads an uploaded zip to find out."""
    if dataset in sess.BUILTIN_META:
        shape, classes = sess.BUILTIN_META[dataset]
        return list(shape), classes
    if dataset == UPLOAD and upload is not None and session is not None:
        ds = session.dataset(_upload_path(upload, session))
        return list(ds.input_shape), len(ds.classes)
    return None


def _upload_path(upload: Any, session: Session) -> str:
    from lab.serve.limits import check_upload
    path = upload if isinstance(upload, str) else getattr(upload, "name", None)
    if not path:
        raise gr.Error("Upload a .zip of an image folder (one sub-folder per class) first.")
    if not str(path).lower().endswith(".zip"):
        raise gr.Error("The upload must be a .zip of an image folder (one sub-folder per class).")
    check_upload(path, session.limits)
    return str(path)


SKIP_KINDS = (("unsafe", "unsafe entry", "unsafe entries", " (absolute paths, '..' or links)"),
              ("non_images", "file that is not an image", "files that are not images", ""),
              ("corrupt", "corrupt image", "corrupt images", ""),
              ("too_large", "image with too many pixels", "images with too many pixels", ""),
              ("outside_classes", "file outside the class folders",
               "files outside the class folders", ""))


def skipped_note(report: dict) -> str:
    """One line on what an uploaded zip's reader skipped ('' when nothing was)."""
    parts = []
    for kind, one, many, why in SKIP_KINDS:
        n = int(report.get(f"skipped_{kind}", 0) or 0)
        if n:
            examples = report.get("examples", {}).get(kind) or []
            eg = f" (e.g. {examples[0][:80]})" if examples else ""
            parts.append(f"{n:,} {one if n == 1 else many}{why}{eg}")
    return ("Skipped " + "; ".join(parts) + ".") if parts else ""


def dataset_note(dataset: str) -> str:
    helps = dataset_help()
    if dataset == UPLOAD:
        return ("A .zip of an image folder: one sub-folder per class (`cats/1.png`, `dogs/2.jpg`); "
                "images are resized to 32×32, 20% are held out for testing.")
    return helps.get(dataset, "")


@user_errors
def on_dataset_change(dataset: str, upload: Any, spec_state: Any, index: Any,
                      session_state: Any = None, request: gr.Request = None):
    """The data set decides the network's input shape and classes."""
    s = get_session(session_state, request)
    note = dataset_note(dataset)
    spec = spec_of(spec_state)
    try:
        meta = dataset_meta(dataset, upload, s)
    except (DatasetError, LimitError, ValueError) as e:
        gr.Warning(one_line(e))
        note += f"  \n⚠ {md_text(one_line(e))}"
        meta = None
    if meta is not None:
        shape, classes = meta
        if list(spec.get("input", [])) != list(shape) or spec.get("classes") != classes:
            spec = edit.set_input(spec, shape, classes)
        note += f"  \nInput {'×'.join(map(str, shape))}, {classes} classes."
        if dataset == UPLOAD:
            skipped = skipped_note(s.dataset(_upload_path(upload, s)).report)
            if skipped:
                gr.Warning(skipped)
                note += f"  \n{md_text(skipped)}"
    return [s, gr.update(value=note), gr.update(visible=dataset == UPLOAD)] + build_views(spec, index)


def device_choices() -> list[tuple[str, str]]:
    """(label, value) for the device dropdown, naming the GPU (or "CPU")."""
    import torch
    if zerogpu.on_zerogpu():
        return [("auto — ZeroGPU (a GPU per run)", "auto"), ("CPU", "cpu")]
    out = []
    for kind in available_devices():
        name = device_name(torch.device(kind))
        out.append((name if kind == "cpu" else f"{kind} — {name}", kind))
    first = out[0][0]
    return [(f"auto — {first.split(' — ')[-1]}", "auto")] + out


def start_weights(weights: Any) -> str | None:
    """The fine-tuning source typed in the Train tab: None (from scratch), "imagenet", or a
    file path — paths only where the app runs locally (ui/photo.py's rule)."""
    from ui.photo import local_paths_allowed
    text = str(weights or "").strip()
    if not text or text.lower() == "none":
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    if not local_paths_allowed():
        raise gr.Error("Here weights can only come from 'imagenet' (files on the server are off).")
    return str(os.path.expanduser(text))


def _settings(dataset: str, upload: Any, s: Session, epochs: Any, batch: Any, optimizer: str,
              lr: Any, schedule: str, seed: Any, augment: bool, device: str,
              weights: Any = None, freeze: Any = "none"):
    from lab.train.trainer import TrainSettings
    name = _upload_path(upload, s) if dataset == UPLOAD else dataset
    return TrainSettings(dataset=name, data_root=os.environ.get("CONVSCOPE_DATA_ROOT", "data"),
                         epochs=to_int(epochs, "epochs"), batch_size=to_int(batch, "batch size"),
                         optimizer=optimizer, lr=float(lr), schedule=schedule,
                         seed=to_int(seed, "seed"), augment=bool(augment), device=device or "auto",
                         report_interval=0.25, weights=start_weights(weights),
                         freeze=freeze or "none")



def network_note(spec_state: Any) -> str:
    """What Start will train: the Build tab's network, in one line."""
    from blocks import SpecError
    from blocks.summary import summarize
    spec = spec_of(spec_state)
    name = md_text(str(spec.get("name", "network")))
    try:
        s = summarize(spec)
    except (SpecError, ValueError, KeyError, TypeError) as e:
        return f"Start trains **{name}** from the Build tab, which does not build yet: " \
               f"{md_text(one_line(e))}"
    width = float(spec.get("width", 1.0) or 1.0)
    return (f"Start trains **{name}** from the Build tab: {edit.short(s.params)} parameters"
            + (f" at width ×{width:g}" if width != 1.0 else "")
            + f", input {'×'.join(map(str, s.input))}, {s.classes} classes.")


@user_errors
def on_log_loss(session_state: Any, log_loss: bool):
    """The log-scale box: remembered for this visitor's redraws; the latest run is redrawn
    at once (a run in progress picks it up at its next redraw)."""
    if not isinstance(session_state, Session):
        return curves({}, log_loss)
    session_state.prefs["log_loss"] = bool(log_loss)
    if session_state.training or not session_state.runs:
        return gr.skip() if session_state.training else curves({}, log_loss)
    rec = session_state.run(None)
    return curves({rec.spec.get("name", "network"): rec.events}, log_loss)


@user_errors
def on_train(session_state: Any, spec_state: Any, dataset: str, upload: Any, train_size: Any,
             epochs: Any, batch: Any, optimizer: str, lr: Any, schedule: str, seed: Any,
             augment: bool, device: str, watch_view: Any = "none", watch_index: Any = 0,
             log_loss: bool = False, weights: Any = None, freeze: Any = "none",
             request: gr.Request = None):
    """Start a run and stream its progress; yields (session, progress, curves, status,
    inspect run, compare runs, export run, watch view, start button, stop button). With a
    watch view, a snapshot of it for test image `watch_index` is taken at every epoch end
    and drawn beside the curves (its slider replays the epochs). `log_loss`: the loss on a
    log axis (the box can change it during the run). `weights` / `freeze`: fine-tune from
    "imagenet" or a weights file with a new classifier (lab/pretrained.py)."""
    s = get_session(session_state, request)
    s.prefs["log_loss"] = bool(log_loss)
    settings = _settings(dataset, upload, s, epochs, batch, optimizer, lr, schedule, seed,
                         augment, device, weights, freeze)
    size = to_int(train_size, "train size") if train_size not in (None, "", 0) else None
    spec = spec_of(spec_state)
    watch = watch_request(spec, watch_view, watch_index)
    name = spec.get("name", "network")
    running = [gr.update(interactive=False), gr.update(interactive=True)]
    idle = [gr.update(interactive=True), gr.update(interactive=False)]
    keep = [gr.skip()] * 4
    shown_name = sess.dataset_display_name(settings.dataset)
    yield [s, progress_html(0, "loading data and building the network…"), gr.skip(),
           f"Training **{html.escape(name)}** on {md_text(shown_name)}…"] + keep + running
    try:
        updates = s.start_training(spec, settings, train_size=size,   # checks limits first
                                   **({"watch": watch} if watch else {}))
    except Exception as e:
        yield [s, progress_html(0, "not started"), gr.skip(),
               f"⚠ Not started: {html.escape(one_line(e))}"] + keep + idle
        raise
    last_plot = last_yield = 0.0
    shown = 0
    unchanged = [gr.skip()] * 2      # the buttons were set by the first yield
    image = _watched_image(s, settings, size, watch["index"]) if watch else None
    for u in updates:
        plot, drawn = gr.skip(), False
        now = time.monotonic()
        if u.done or (u.new_events and now - last_plot >= CURVE_EVERY_S):
            if u.events:
                plot, drawn = curves({name: u.events}, s.prefs.get("log_loss")), True
            last_plot = now
        before = shown
        watched, shown = watch_plot(u.events, shown, image) if watch else (gr.skip(), 0)
        if not u.done:
            if drawn or shown != before or now - last_yield >= PROGRESS_EVERY_S:
                last_yield = now
                yield [s, progress_html(u.progress, u.text), plot, gr.skip()] + keep[:3] \
                    + [watched] + unchanged
            continue
        if u.run_id is None:
            gr.Warning(f"Training {u.status}: {u.message}")
            yield [s, progress_html(u.progress, u.text), plot,
                   f"⚠ Training {u.status}: {html.escape(u.message)}"] + keep[:3] + [watched] + idle
            return
        if u.warning:
            gr.Warning(u.warning)
        yield [s, progress_html(u.progress, u.text), plot,
               f"✓ {html.escape(u.message)} — open **Inspect** to look inside."] \
            + run_updates(s, u.run_id) + [watched] + idle


@user_errors
def on_continue(session_state: Any, run_id: Any, epochs: Any, request: gr.Request = None):
    """Continue a stopped or finished run from its last checkpoint (the end of its last
    complete epoch) to `epochs` in all (empty: its planned total), exactly as if it had
    not stopped; with more epochs than planned, the rest follows the new total's
    schedule. Yields what on_train yields, less the watch view."""
    s = get_session(session_state, request)
    if not run_id:
        raise gr.Error("Pick a run to continue.")
    total = to_int(epochs, "epochs") if epochs not in (None, "", 0) else None
    spec, settings, rec = s.continue_plan(str(run_id), total)
    name = spec.get("name", "network")
    running = [gr.update(interactive=False), gr.update(interactive=True)]
    idle = [gr.update(interactive=True), gr.update(interactive=False)]
    keep = [gr.skip()] * 3
    yield [s, progress_html(0, "loading data and the checkpoint…"), gr.skip(),
           f"Continuing **{html.escape(rec.id)}** to {settings.epochs} epoch(s)…"] + keep + running
    try:
        updates = s.start_training(spec, settings, resume=rec.id)
    except Exception as e:
        yield [s, progress_html(0, "not started"), gr.skip(),
               f"⚠ Not continued: {html.escape(one_line(e))}"] + keep + idle
        raise
    last_plot = 0.0
    for u in updates:
        plot = gr.skip()
        now = time.monotonic()
        if u.done or (u.new_events and now - last_plot >= CURVE_EVERY_S):
            events = s.run(u.run_id).events if u.done and u.run_id else u.events
            plot = curves({name: events}) if events else gr.skip()
            last_plot = now
        if not u.done:
            yield [s, progress_html(u.progress, u.text), plot, gr.skip()] + keep + running
            continue
        if u.run_id is None:
            yield [s, progress_html(u.progress, u.text), plot,
                   f"⚠ Training {u.status}: {html.escape(u.message)}"] + keep + idle
            return
        if u.warning:
            gr.Warning(u.warning)
        yield [s, progress_html(u.progress, u.text), plot,
               f"✓ {html.escape(u.message)} — open **Inspect** to look inside."] \
            + run_updates(s, u.run_id) + idle


ABLATE_CHOICES = [("attention: none / SE / CBAM", "attention"),
                  ("Ghost modules vs regular convs", "ghost")]


@user_errors
def on_ablate(session_state: Any, spec_state: Any, dataset: str, upload: Any, train_size: Any,
              epochs: Any, batch: Any, optimizer: str, lr: Any, schedule: str, seed: Any,
              augment: bool, device: str, what: str = "attention", request: gr.Request = None):
    """Train the network once per variant — attention none / SE / CBAM, or its Ghost modules
    against the regular convs they replace — with the same seed, data, settings and budget,
    one run after another under the trainings' concurrency limit (lab/ablate.py makes the
    variants); then open Compare on their runs. A variant that fails or is stopped leaves the
    runs before it; Stop ends the ablation. Yields (session, progress, curves, status, inspect
    run, compare runs, export run, tabs, compare curves, compare table, start, stop, ablate)."""
    from lab.ablate import AblationError, ablation_specs
    from ui.compare import on_compare
    s = get_session(session_state, request)
    settings = _settings(dataset, upload, s, epochs, batch, optimizer, lr, schedule, seed,
                         augment, device)
    size = to_int(train_size, "train size") if train_size not in (None, "", 0) else None
    spec = spec_of(spec_state)
    try:
        specs = ablation_specs(spec, ["none", "se", "cbam"]) if what != "ghost" else \
            ablation_specs(spec, ghost=["ghost", "conv"])
    except AblationError as e:
        raise gr.Error(str(e)) from None
    running = [gr.update(interactive=False), gr.update(interactive=True), gr.update(interactive=False)]
    idle = [gr.update(interactive=True), gr.update(interactive=False), gr.update(interactive=True)]
    keep = [gr.skip()] * 6
    n = len(specs)
    events_by: dict[str, list[dict]] = {}
    ids: list[str] = []
    notes: list[str] = []
    last_plot = 0.0
    for i, (label, vspec) in enumerate(specs.items()):
        head = f"variant {i + 1}/{n} · {label}"
        yield [s, progress_html(i / n, f"{head}: loading…"), gr.skip(),
               f"Ablating **{html.escape(spec.get('name', 'network'))}**: {html.escape(label)}…"] \
            + keep + running
        try:
            updates = s.start_training(vspec, settings, train_size=size)
        except Exception as e:       # noqa: BLE001 - this variant is reported, the rest go on
            notes.append(f"{label}: not started — {one_line(e)}")
            continue
        for u in updates:
            events_by[label] = u.events
            plot = gr.skip()
            now = time.monotonic()
            if u.done or (u.new_events and now - last_plot >= CURVE_EVERY_S):
                plot = curves({k: v for k, v in events_by.items() if v})
                last_plot = now
            yield [s, progress_html((i + u.progress) / n, f"{head} · {u.text}"), plot, gr.skip()] \
                + keep + running
            if u.done:
                if u.run_id is not None:
                    ids.append(u.run_id)
                    notes.append(f"{label}: {u.run_id} {u.status}")
                else:
                    notes.append(f"{label}: {u.status} — {u.message}")
    status = "Ablation: " + "; ".join(html.escape(x) for x in notes)
    if not ids:
        yield [s, progress_html(1, "no variant finished"), gr.skip(), "⚠ " + status] + keep + idle
        return
    _, fig, rows = on_compare(s, ids)
    pickers = run_updates(s, ids[-1])
    pickers[1] = gr.update(choices=s.run_choices(), value=ids)
    yield [s, progress_html(1, f"{len(ids)} of {n} variants trained"), gr.skip(),
           "✓ " + status + " — opened **Compare** on them."] + pickers \
        + [gr.Tabs(selected="compare"), fig, rows] + idle


@user_errors
def on_stop(session_state: Any):
    """Stop the session's training: it ends after the current batch and is kept as a run."""
    idle = [gr.update(interactive=True), gr.update(interactive=False)]
    if not isinstance(session_state, Session):
        return [gr.skip(), gr.skip(), "Nothing is training."] + [gr.skip()] * 3 + idle
    s = session_state
    run_id = s.stop_training(wait=3.0)
    if run_id is None:
        return [gr.skip(), gr.skip(), "Nothing is training (or it is still stopping)."] \
            + [gr.skip()] * 3 + idle
    rec = s.run(run_id)
    plot = curves({rec.spec.get("name", "network"): rec.events}, s.prefs.get("log_loss"))
    acc = rec.end.get("test_acc")
    acc_text = "" if acc is None else f", test accuracy {100 * acc:.1f}%"
    frac = next((e.get("progress", 0) for e in reversed(rec.events) if e.get("type") == "step"), 0)
    return [progress_html(frac, f"stopped — {rec.end.get('message', '')}"), plot,
            f"■ {run_id} stopped: the model trained so far is kept{acc_text}."] \
        + run_updates(s, run_id) + idle


# ---------------------------------------------------------------------------- layout

def layout(ui: SimpleNamespace, limits: Limits) -> None:
    """Lay out the Train tab; its components go on `ui`."""
    from lab.train.trainer import TrainSettings
    defaults = TrainSettings()  # one source for the trainer's tuned defaults
    with gr.Tab("Train", id="train"):
        with gr.Row():
            with gr.Column(scale=1):
                ui.dataset_dd = gr.Dropdown(list(DATASETS) + [UPLOAD], value="shapes",
                                            label="Data set")
                ui.dataset_md = gr.Markdown(dataset_note("shapes"))
                ui.zip_file = gr.File(label=f"Image folder .zip (≤ {limits.max_upload_mb:g} MB)",
                                      file_types=[".zip"], visible=False)
                ui.train_size = gr.Number(sess.default_train_size("shapes") or 0,
                                          label="Train size (0 = all)", precision=0, minimum=0)
                with gr.Row():
                    ui.epochs = gr.Number(3, label=f"Epochs (≤ {limits.max_epochs})", precision=0,
                                          minimum=1, maximum=limits.max_epochs)
                    ui.batch = gr.Number(defaults.batch_size,
                                         label=f"Batch size (≤ {limits.max_batch})",
                                         precision=0, minimum=1, maximum=limits.max_batch)
                with gr.Row():
                    ui.optimizer = gr.Dropdown(["adam", "adamw", "sgd"], value="adam",
                                               label="Optimizer")
                    ui.lr = gr.Number(defaults.lr, label="Learning rate", minimum=0)
                with gr.Row():
                    ui.schedule = gr.Dropdown(["onecycle", "cosine", "constant"], value="onecycle",
                                              label="Schedule")
                    ui.seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                ui.augment = gr.Checkbox(False, label="Augment (flips, pad-and-crop)")
                ui.device = gr.Dropdown(device_choices(), value="auto", label="Device")
                with gr.Row():
                    ui.watch_view = gr.Dropdown(WATCH_CHOICES, value="none", elem_id="cs-watch-view",
                                                label="Watch while training (each epoch)")
                    ui.watch_index = gr.Number(0, label="test image #", precision=0, minimum=0)
                # Filled when the page's spec arrives (spec_state.change): summarising a network
                # here would import torch's compiler stack before the server listens.
                ui.train_net = gr.Markdown("Start trains the Build tab's network.", elem_id="cs-train-net")
                with gr.Accordion("Fine-tune: start from pretrained weights", open=False):
                    ui.ft_weights = gr.Textbox(
                        "", label="Weights: empty (from scratch), 'imagenet', or a .pth / "
                        ".safetensors file such as a run's weights.safetensors", elem_id="cs-ft-weights")
                    ui.ft_freeze = gr.Radio([("train everything", "none"),
                                             ("freeze the backbone (train the new head and SE/CBAM)",
                                              "backbone")], value="none", label="Freeze")
                    gr.Markdown("The classifier is new for the data set's classes; the rest is "
                                "mapped onto the network by structure. ImageNet weights fit presets "
                                "at width 1 with an input of at least 64×64 (`python -m lab train "
                                "--weights imagenet --input 3x128x128`); the weights of a run of the "
                                "same network fit at its size.")
                with gr.Row():
                    ui.start_btn = gr.Button("Start", variant="primary", elem_id="cs-start")
                    ui.stop_btn = gr.Button("Stop", variant="stop", interactive=False,
                                            elem_id="cs-stop")
                with gr.Row():
                    ui.continue_run = gr.Dropdown([], label="Continue a stopped or finished run",
                                                  scale=3)
                    ui.continue_epochs = gr.Number(0, label="Train to, in all (0: as planned)",
                                                   precision=0, minimum=0, scale=1)
                    ui.continue_btn = gr.Button("Continue training", scale=1,
                                                elem_id="cs-continue")
                with gr.Row():
                    ui.ablate_what = gr.Dropdown(ABLATE_CHOICES, value="attention", scale=2,
                                                 label="Ablate: same seed, data and settings")
                    ui.ablate_btn = gr.Button("Ablate", elem_id="cs-ablate", scale=1)
            with gr.Column(scale=2):
                ui.progress = gr.HTML(progress_html(0, "not started"), elem_id="cs-progress")
                ui.curves_plot = gr.Plot(curves({}), label="Training curves", elem_id="cs-curves")
                ui.train_log = gr.Checkbox(False, label="log-scale loss", elem_id="cs-train-log")
                ui.watch_plot = gr.Plot(label="Watched view (the slider replays the epochs)",
                                        elem_id="cs-watch")
                ui.train_status = gr.Markdown(elem_id="cs-train-status")


def wire(ui: SimpleNamespace, limits: Limits) -> None:
    """The Train tab's events (a data set also reshapes the Build tab's network; a finished
    run appears in the Inspect, Compare and Export pickers)."""
    dataset_inputs = [ui.dataset_dd, ui.zip_file, ui.spec_state, ui.layer_dd, ui.session_state]
    dataset_outputs = [ui.session_state, ui.dataset_md, ui.zip_file] + ui.build_views
    on_dataset = keeps_outputs(on_dataset_change, len(dataset_outputs), 1)
    ui.dataset_dd.change(on_dataset, dataset_inputs, dataset_outputs, api_name="set_dataset")
    ui.zip_file.upload(on_dataset, dataset_inputs, dataset_outputs, api_visibility="private")
    ui.spec_state.change(network_note, ui.spec_state, ui.train_net, api_visibility="private",
                         show_progress="hidden")
    ui.train_log.input(on_log_loss, [ui.session_state, ui.train_log], ui.curves_plot,
                       api_visibility="private", show_progress="hidden")
    buttons = [ui.start_btn, ui.stop_btn]
    settings_inputs = [ui.session_state, ui.spec_state, ui.dataset_dd, ui.zip_file, ui.train_size,
                       ui.epochs, ui.batch, ui.optimizer, ui.lr, ui.schedule, ui.seed, ui.augment,
                       ui.device]
    train_outputs = [ui.session_state, ui.progress, ui.curves_plot, ui.train_status] \
        + ui.run_pickers + [ui.watch_plot] + buttons
    train_event = ui.start_btn.click(
        keeps_outputs(on_train, len(train_outputs), 3),
        settings_inputs + [ui.watch_view, ui.watch_index, ui.train_log, ui.ft_weights, ui.ft_freeze],
        train_outputs,
        api_name="train", concurrency_limit=limits.max_concurrent_trainings,
        concurrency_id="train", show_progress="hidden")
    continue_outputs = [ui.session_state, ui.progress, ui.curves_plot, ui.train_status] \
        + ui.run_pickers + buttons
    continue_event = ui.continue_btn.click(
        keeps_outputs(on_continue, len(continue_outputs), 3),
        [ui.session_state, ui.continue_run, ui.continue_epochs], continue_outputs,
        api_name="continue_training", concurrency_limit=limits.max_concurrent_trainings,
        concurrency_id="train", show_progress="hidden")
    # the variants queue with every other training (same concurrency id and limit)
    ablate_outputs = [ui.session_state, ui.progress, ui.curves_plot, ui.train_status] \
        + ui.run_pickers + [ui.tabs, ui.compare_plot, ui.compare_table] + buttons + [ui.ablate_btn]
    ablate_event = ui.ablate_btn.click(
        keeps_outputs(on_ablate, len(ablate_outputs), 3), settings_inputs + [ui.ablate_what],
        ablate_outputs,
        api_name="ablate", concurrency_limit=limits.max_concurrent_trainings,
        concurrency_id="train", show_progress="hidden")
    ui.stop_btn.click(on_stop, [ui.session_state],
                      [ui.progress, ui.curves_plot, ui.train_status] + ui.run_pickers + buttons,
                      cancels=[train_event, ablate_event, continue_event], api_name="stop",
                      concurrency_limit=None
                      ).then(lambda: gr.update(interactive=True), None, ui.ablate_btn,
                             api_visibility="private")
