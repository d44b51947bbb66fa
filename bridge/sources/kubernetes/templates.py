"""Pod templates: their digest, the restart stamp, and values read from a workload.

Templates are compared by :func:`template_hash`, a digest of the pod template without the
restart annotation, without the controller's ``pod-template-hash`` label and without the
strategic-merge ``$patch`` directive, so a restart is not a new template, a ReplicaSet's template
hashes like its Deployment's and a ControllerRevision's (``data.spec.template``, stored as a
``$patch: replace`` patch) like its StatefulSet's or DaemonSet's.

A *value source* says where a deploy's sha, version or deployer comes from:
``annotation:<key>`` / ``label:<key>`` (on the workload, then on its pod template),
``template_annotation:<key>`` / ``template_label:<key>`` (pod template only), ``image[:<container>]``
or ``image_tag[:<container>]`` (the first container when none is named).
"""

from __future__ import annotations

import hashlib
import json
import re

from bridge.sources.kubernetes.watch import JsonObject, meta
from bridge.sources.lineage import split_image

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
POD_TEMPLATE_HASH = "pod-template-hash"
#: Strategic-merge directive the StatefulSet/DaemonSet controllers add to a ControllerRevision's template.
PATCH_DIRECTIVE = "$patch"

_VALUE_SOURCE = re.compile(r"^(?:(?:annotation|label|template_annotation|template_label):\S+|(?:image|image_tag)(?::\S+)?)$")


def check_value_sources(value: list[str]) -> list[str]:
    """``value`` if every item is a value source, else :class:`ValueError` naming the first that is not."""
    for item in value:
        if not _VALUE_SOURCE.match(item):
            raise ValueError(
                f"{item!r}: use annotation:<key>, label:<key>, template_annotation:<key>, "
                "template_label:<key>, image[:<container>] or image_tag[:<container>]"
            )
    return value


def pod_template(obj: JsonObject) -> JsonObject:
    """A workload's (or ReplicaSet's) ``spec.template``; of a ControllerRevision's ``data`` too."""
    template = (obj.get("spec") or {}).get("template")
    return template if isinstance(template, dict) else {}


def template_hash(template: JsonObject) -> str:
    """Digest of a pod template, ignoring the restart annotation, ``pod-template-hash`` and ``$patch``."""
    clone = {k: v for k, v in template.items() if k != PATCH_DIRECTIVE}
    template_meta = dict(clone.get("metadata") or {})
    template_meta.pop("creationTimestamp", None)
    annotations = {k: v for k, v in (template_meta.get("annotations") or {}).items() if k != RESTARTED_AT}
    labels = {k: v for k, v in (template_meta.get("labels") or {}).items() if k != POD_TEMPLATE_HASH}
    template_meta.pop("annotations", None)
    template_meta.pop("labels", None)
    if annotations:
        template_meta["annotations"] = annotations
    if labels:
        template_meta["labels"] = labels
    clone["metadata"] = template_meta
    canonical = json.dumps(clone, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def restarted_at(obj: JsonObject) -> str | None:
    """The ``kubectl rollout restart`` stamp on a workload's pod template."""
    value = ((pod_template(obj).get("metadata") or {}).get("annotations") or {}).get(RESTARTED_AT)
    return str(value) if value else None


def containers(obj: JsonObject) -> list[JsonObject]:
    """The containers of a workload's pod template."""
    spec = pod_template(obj).get("spec") or {}
    return [c for c in spec.get("containers") or [] if isinstance(c, dict)]


def resolve_value(sources: list[str], obj: JsonObject) -> str | None:
    """The first non-empty value among ``sources`` (value sources, see the module docstring)."""
    template_meta = pod_template(obj).get("metadata") or {}
    for item in sources:
        what, _, key = item.partition(":")
        value: str | None = None
        if what in ("annotation", "label"):
            plural = "annotations" if what == "annotation" else "labels"
            value = (meta(obj).get(plural) or {}).get(key) or (template_meta.get(plural) or {}).get(key)
        elif what in ("template_annotation", "template_label"):
            value = (template_meta.get("annotations" if what == "template_annotation" else "labels") or {}).get(key)
        else:
            chosen = [c for c in containers(obj) if not key or c.get("name") == key][:1]
            image = str(chosen[0].get("image") or "") if chosen else ""
            value = image if what == "image" else (split_image(image)[1] if image else None)
        if value:
            return str(value)
    return None
