"""A scripted model's replies that every agent accepts: valid JSON for JSON agents (whatever
the request), prose otherwise."""

import json
import re

CANNED = {
    "EditorReview": {"suggestions": [{"issue": "Pacing", "suggestion": "Cut.",
                                      "priority": "low"}]},
    "CharacterReaction": {"actions": ["waits"], "dialog": [], "physicalSensations": [],
                          "emotions": ["calm"], "internalMonologue": []},
    "RaterFeedback": {"score": 5, "opinion": "Fine.", "suggestions": []},
    "CharacterDetails": {"name": "A", "age": "1", "appearance": "a", "personality": "b",
                         "background": "c", "motivations": "d", "fears": "e"},
}


def reply(messages, params):
    """Valid JSON for JSON agents (whatever the request), prose otherwise."""
    if params.json_schema is None:
        return "The story goes on."
    title = params.json_schema.get("title", "")
    outlines = re.fullmatch(r"ChapterOutlines(\d+)", title)
    if outlines:
        count = int(outlines.group(1))
        return json.dumps({"outlines": [{"number": i + 1, "title": "T", "summary": "S."}
                                        for i in range(count)]})
    return json.dumps(CANNED.get(title, {"answer": "Fine."}))
