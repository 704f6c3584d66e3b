"""Ask before deleting, and messages that outlive the rerun an action ends with.

Every page that deletes (or cancels) something does it in two steps, with the same words:

    delete_button("train.delete", 7, "Delete run #7? …", lambda: wb.delete_run(7),
                  button_key="train.delete.7", done="Run #7 deleted.", page="train")

draws "Delete…"; a click remembers what was asked (``ask_first``), and the next runs ask the
question with Yes / Keep it (``confirm``) until one is pressed. Where the button and the
question need other places, call those two (and ``asked``) directly.

Nothing is deleted before Yes. A dataset asks more (``confirm_by_typing``: its name typed,
then the button). ``confirm`` runs the action, shows a ``WorkbenchError`` as the
page's error, and on success leaves a toast for the page's next run (``show_flash``) and
reruns, so the page redraws without what went. The pending question lives in session state
under ``<key>.confirm``; the buttons are ``<key>.yes`` and ``<key>.no``.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from engine.errors import WorkbenchError


def delete_button(key: str, target: object, question: str, action: Callable[[], object], *,
                  where=st, label: str = "Delete…", button_key: str | None = None,
                  help: str | None = None, icon: str | None = ":material/delete:", **confirm_options) -> None:
    """The usual case: a ``label`` button (in ``where``, e.g. a column) that asks first, and
    below it ``confirm``'s question while ``target`` waits for an answer."""
    if where.button(label, key=button_key or key, icon=icon, help=help):
        ask_first(key, target)
    if asked(key) == target:
        confirm(key, question, action, **confirm_options)


def ask_first(key: str, target: object) -> None:
    """Step 1: the user asked to delete ``target``; ``confirm`` asks them next."""
    st.session_state[f"{key}.confirm"] = target


def asked(key: str) -> object | None:
    """What the user asked to delete under ``key`` and has not answered yet (None: nothing)."""
    return st.session_state.get(f"{key}.confirm")


def confirm(key: str, question: str, action: Callable[[], object], *,
            done: str | Callable[[object], str] | None = None, page: str | None = None,
            yes: str = "Yes, delete it", no: str = "Keep it") -> None:
    """Step 2: ``question`` with a Yes and a Keep button. Yes runs ``action``; then ``done`` (or
    ``done(what action returned)``) is flashed on ``page``'s next run and the script reruns.
    Keep forgets the question."""
    st.warning(question)
    yes_column, no_column = st.columns(2)
    if yes_column.button(yes, key=f"{key}.yes", type="primary"):
        st.session_state.pop(f"{key}.confirm", None)
        try:
            result = action()
        except WorkbenchError as error:  # e.g. it started training meanwhile: say why, keep it
            st.error(str(error))
            return
        _done(result, done, page)
    if no_column.button(no, key=f"{key}.no"):
        st.session_state.pop(f"{key}.confirm", None)
        st.rerun()


def confirm_by_typing(key: str, name: str, label: str, button: str, action: Callable[[], object], *,
                      done: str | None = None, page: str | None = None) -> None:
    """For what is costly to lose: ``button`` (key ``key``) stays disabled until ``name`` is
    typed into the box labelled ``label`` (key ``<key>.typed.<name>``); then as ``confirm``'s Yes."""
    typed = st.text_input(label, key=f"{key}.typed.{name}")
    if st.button(button, type="primary", disabled=typed.strip() != name, key=key):
        try:
            result = action()
        except WorkbenchError as error:
            st.error(str(error))
            return
        _done(result, done, page)


def _done(result: object, done: str | Callable[[object], str] | None, page: str | None) -> None:
    if done and page:
        flash(page, done(result) if callable(done) else done)
    st.rerun()


def flash(page: str, message: str) -> None:
    """A message for ``page``'s next run (after ``st.rerun``), shown once by ``show_flash``."""
    st.session_state[f"{page}.flash"] = message


def show_flash(page: str) -> None:
    """The message an action left for this page, as a toast: it goes by itself, never stays up
    stale."""
    if f"{page}.flash" in st.session_state:
        st.toast(st.session_state.pop(f"{page}.flash"), icon=":material/check_circle:")
