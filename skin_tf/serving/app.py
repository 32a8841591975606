"""Streamlit page: classify dermatoscopic images with an exported skin_tf model and explain them.

    skin-tf app [--model saved_models/NAME] [--models-dir saved_models] [--engine tflite]

(or `streamlit run skin_tf/serving/app.py -- --model saved_models/NAME`; the environment variables
SKIN_TF_MODEL, SKIN_TF_MODELS_DIR and SKIN_TF_ENGINE work too). The page loads the model written by
`skin-tf export` once per process and never the Keras training model: the chosen engine (the
export's default unless another is picked) gives the probabilities, the SavedModel's `explain`
endpoint the Grad-CAM map. Research and teaching use only: not a medical device and not medical
advice.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from skin_tf.data.images import MAX_PIXELS, MIN_SIDE
from skin_tf.serving import page as support
from skin_tf.serving import table as predictions
from skin_tf.serving import upload as analysis
from skin_tf.serving.launch import page_settings
from skin_tf.serving.served import default_engine
from skin_tf.serving.verdict import FAILED, REJECTED

st.set_page_config(page_title="skin_tf · HAM10000 lesion classifier", layout="wide")


@st.cache_resource(show_spinner="Loading the exported model…", max_entries=4)
def load_model(path: str, version: float | None):
    """The SavedModel of an export folder (the page needs its `explain` for every upload), loaded
    once per process, folder and `version` (the mtime of its metadata.json, so a model exported
    again into the same folder is reloaded)."""
    from skin_tf.serving.served import load_served

    return load_served(path, engine="savedmodel")


@st.cache_resource(show_spinner="Loading the engine…", max_entries=8)
def load_engine(path: str, version: float | None, engine: str):
    """The same export scoring with `engine`, sharing the loaded SavedModel."""
    return load_model(path, version).using(engine)


@st.cache_data(show_spinner=False, max_entries=32)
def analyse(
    model_path: str,
    version: float | None,
    engine: str,
    name: str,
    data: bytes,
    fields: tuple[tuple[str, object], ...] = (),
) -> analysis.UploadResult:
    """Prediction and Grad-CAM of one upload (with the patient fields given for it), kept so
    moving a slider does not recompute it."""
    served = load_engine(model_path, version, engine)
    return analysis.analyse_upload(served, name, data, dict(fields) or None)


def patient_fields_inputs(key: str) -> tuple[tuple[str, object], ...]:
    """Optional age, sex and body site for one upload (a model trained with them): the
    (field, value) pairs given, () when none is."""
    from skin_tf.data.meta_fields import VOCABULARIES

    columns = st.columns(len(served.fields))
    given = {}
    for column, name in zip(columns, served.fields, strict=True):
        if name == "age":
            given[name] = column.number_input(
                "Age (years, optional)", 0, 120, value=None, step=5, key=f"{key}:age"
            )
        else:
            given[name] = column.selectbox(
                f"{'Body site' if name == 'localization' else 'Sex'} (optional)",
                [None, *VOCABULARIES[name]],
                format_func=lambda value: "not given" if value is None else value,
                key=f"{key}:{name}",
            )
    return tuple((name, value) for name, value in given.items() if value is not None)


st.title("Skin lesion classifier · HAM10000, 7 classes")
st.warning(
    "**Not medical advice.** A research and teaching tool trained on one public dataset, "
    "not a medical device and not validated for clinical use. It cannot tell you whether a "
    "lesion is dangerous: see a doctor about any skin change that worries you."
)

settings = page_settings()
options, first, skipped = support.model_choices(settings)
if not options:
    st.error(support.no_model_instructions(settings))
    st.stop()

with st.sidebar:
    st.header("Model")
    chosen = st.selectbox(
        "Exported model",
        options,
        index=first,
        format_func=support.model_label,
        help=f"Every exported model in `{settings.models_dir}`: folder · backbone and input "
        "size. The run, its test figures and threshold are under Provenance below.",
    )
    if skipped:
        st.caption("Not exported models, skipped: " + ", ".join(p.name for p in skipped))

version = support.model_version(chosen)
try:
    served = load_model(str(chosen), version)
except Exception as err:  # any broken folder: say so on the page instead of a traceback
    st.error(
        f"Could not load the model in `{chosen}`: {err}\n\nPick another model in the sidebar, "
        f"or export the run again: `skin-tf export RUN_DIR --out {chosen} --overwrite`."
    )
    st.stop()

engines = served.available_engines
default, default_note = default_engine(served.metadata)
wanted = settings.engine if settings.engine in engines else default
with st.sidebar:
    engine = st.selectbox(
        "Engine for the probabilities",
        engines,
        index=engines.index(wanted),
        format_func=lambda name: support.engine_label(served.metadata, name),
        help=support.engine_help(served.metadata, engines),
    )
    if settings.engine is not None and settings.engine not in engines:
        st.caption(f"`{settings.engine}` is not in this export: using `{default}`.")
    elif engine == default:
        st.caption(f"`{engine}`: {default_note}")
try:
    served = load_engine(str(chosen), version, engine)
except Exception as err:  # a missing or damaged .tflite: say so and how to fix it
    st.error(
        f"Could not load the {engine} engine of `{chosen}`: {err}\n\nPick another engine in the "
        "sidebar."
    )
    st.stop()

with st.sidebar:
    top_k = st.slider("Classes to show (top-k)", 1, len(served.classes), 3)
    alpha = st.slider("Grad-CAM overlay opacity (alpha)", 0.0, 1.0, 0.4, 0.05)
    st.header("Provenance")
    st.markdown(support.provenance_markdown(served.metadata))
    st.markdown(support.engine_markdown(served.metadata, served.engine))
    if served.guarded:
        guard = served.metadata["ood_guard"]
        kept = guard["thresholds"][served.engine]["val_kept"]
        st.caption(
            f"Out-of-distribution guard: {guard['method']} on {guard['layer']}; this engine's "
            f"threshold {served.ood_threshold:.3g} keeps {kept:.1%} of the validation images. "
            "Pictures unlike the training images get a notice instead of an answer."
        )
    else:
        st.caption(f"Note: {served.guard_note}")
    if served.fields:
        st.caption(
            f"This model also takes the patient's {', '.join(served.fields)} (each optional, "
            "under each upload); without them it answers from the image alone. They never "
            "decide whether a picture is refused."
        )
    with st.expander("metadata.json"):
        st.json(served.metadata, expanded=False)
    st.warning(served.disclaimer)

uploads = st.file_uploader(
    "Dermatoscopic images (JPG or PNG; several at once are fine)",
    type=analysis.UPLOAD_TYPES,
    accept_multiple_files=True,
    help=f"At least {MIN_SIDE}×{MIN_SIDE} px and at most {MAX_PIXELS / 1e6:.0f} megapixels.",
)
if not uploads:
    st.info("Upload one or more images to see the predicted classes and a Grad-CAM map.")
    st.stop()

from skin_tf.explain.gradcam import overlay  # noqa: E402  (imports TensorFlow: after the cheap paths)

results: list[analysis.UploadResult] = []
for index, upload in enumerate(uploads):
    st.divider()
    st.subheader(upload.name)
    given = patient_fields_inputs(f"fields:{index}:{upload.name}") if served.fields else ()
    try:
        result = analyse(str(chosen), version, served.engine, upload.name, upload.getvalue(), given)
    except Exception as err:  # one failing file must not take the page or the others down
        result = analysis.UploadResult(upload.name, error=f"unexpected error: {err}")
    results.append(result)
    # What may be shown (an answer, the melanoma flag) is the upload's verdict: the rule
    # `skin-tf predict` and the table below follow too.
    answer = result.verdict(served.threshold)
    if answer.status == FAILED:
        st.error(
            f"**{upload.name}** cannot be analysed: {result.error}. Upload a JPG or PNG photo "
            f"of the lesion, at least {MIN_SIDE}×{MIN_SIDE} px and at most "
            f"{MAX_PIXELS / 1e6:.0f} megapixels."
        )
        continue
    for note in result.notes:
        st.info(f"Note: {note}")
    if result.fields_text is not None:
        st.caption(f"Scored with: {result.fields_text}.")
    width, height = result.size
    if answer.status == REJECTED:  # no answer: the notice, the picture, the numbers greyed
        st.info(analysis.ood_notice(result))
        image_col, rest_col = st.columns([1, 2.2])
        image_col.image(result.display, caption=f"Original, {width}×{height} px", width="stretch")
        with rest_col.expander("What the model computed anyway (not an answer)"):
            top = support.top_k_frame(result.probs, top_k)
            st.caption(
                " · ".join(f"{row['class']} {row['probability']:.3f}" for row in
                           top.to_dict("records"))
                + " (no melanoma flag is given for this picture)"
            )  # fmt: skip
        continue
    image_col, cam_col, chart_col = st.columns([1, 1, 1.2])
    image_col.image(result.display, caption=f"Original, {width}×{height} px", width="stretch")
    # The heatmap method was checked at export (`skin-tf explain-check`): a map that did not
    # beat a centred blob is not shown as an explanation, only on request, below the reason.
    explain = served.metadata.get("explain")
    note = support.explanation_note(served.metadata)
    if note is not None:
        cam_col.info(note)
    with cam_col if note is None else cam_col.expander("The map anyway (not an explanation)"):
        st.image(
            overlay(result.display, result.heatmap, alpha=alpha, resize=served.resize),
            caption=analysis.gradcam_caption(result, explain),
            width="stretch",
        )
    top = support.top_k_frame(result.probs, top_k)
    with chart_col:
        st.altair_chart(
            support.top_k_chart(top), width="stretch", height=support.chart_height(top_k)
        )
        st.markdown(
            "\n".join(
                f"{rank}. **{row['class']}** {row['name']}: {row['probability']:.3f}"
                for rank, row in enumerate(top.to_dict("records"), start=1)
            )
        )
        text = support.mel_flag_text(
            result.probs,
            served.mel_point,
            served.metadata.get("mel_threshold"),
            result.in_distribution,
            result.ood_score,
            result.ood_threshold,
        )
        (st.warning if answer.mel_flag else st.info)(text)

st.divider()
table = predictions.predictions_frame(
    results, served.threshold, Path(str(chosen)).name, served.engine
)
st.subheader("All predictions")
st.dataframe(
    table,
    hide_index=True,
    placeholder="",
    column_config=predictions.table_column_config(table),
    column_order=predictions.table_column_order(table),
)
st.download_button(
    "Download predictions (CSV)",
    predictions.predictions_csv(table),
    file_name="skin_tf_predictions.csv",
    mime="text/csv",
)
st.caption(served.disclaimer)
