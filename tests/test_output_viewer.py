"""The viewer of a job's outputs: one fragment per output, with links to its neighbours."""
from __future__ import annotations

from tests.conftest import soup

HTMX = {"HX-Request": "true"}


def test_each_output_has_a_viewer_fragment_linked_to_its_neighbours(client, make_job):
    job = make_job(files=3)
    base = f"/admin/history/jobs/{job.prompt_id}/outputs"
    middle = soup(client.get(f"{base}/1", headers=HTMX))
    viewer = middle.select_one("dialog#output-viewer")
    assert viewer["data-index"] == "1" and middle.select_one("html") is None
    assert viewer.select_one("img.viewer-media")["src"] == f"/media/output/{job.outputs[1]['subfolder']}/final_00002_.png"
    assert viewer.select_one("a.viewer-prev")["hx-get"] == f"{base}/0"
    assert viewer.select_one("a.viewer-next")["hx-get"] == f"{base}/2"
    assert "2 / 3" in viewer.select_one(".viewer-count").get_text()
    last = soup(client.get(f"{base}/2", headers=HTMX)).select_one("dialog#output-viewer")
    assert last.select_one("a.viewer-next") is None and last.select_one("span.viewer-next[aria-disabled]")


def test_without_htmx_the_viewer_url_leads_to_the_file(client, make_job):
    job = make_job(files=1)
    response = client.get(f"/admin/history/jobs/{job.prompt_id}/outputs/0")
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/media/output/{job.outputs[0]['subfolder']}/final_00001_.png")


def test_an_unknown_job_or_output_is_404(client, make_job):
    job = make_job(files=1)
    assert client.get(f"/admin/history/jobs/{job.prompt_id}/outputs/1", headers=HTMX).status_code == 404
    assert client.get("/admin/history/jobs/nope/outputs/0", headers=HTMX).status_code == 404
