def test_history_api_starts_empty(client):
    response = client.get("/api/admin/history")
    assert response.status_code == 200
    assert response.json == []


def test_job_factory_lists_newest_first(client, make_job):
    older = make_job(minutes_ago=10)
    newer = make_job(minutes_ago=1)
    ids = [record["prompt_id"] for record in client.get("/api/admin/history").json]
    assert ids == [newer.prompt_id, older.prompt_id]
