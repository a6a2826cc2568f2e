// The page the browser test drives: herald-client/react's hooks, as an app
// would use them. Bundled by run.mjs with esbuild; served on herald's origin.
import { useState } from "react";
import { createRoot } from "react-dom/client";

import { Herald } from "herald-client";
import { HeraldProvider, useJob, useJobs } from "herald-client/react";

const herald = new Herald();

function Jobs() {
  const { jobs, connected, failure } = useJobs({ kind: "demo" });
  return (
    <section>
      <p id="feed" data-connected={String(connected)} data-failure={failure?.message ?? ""}>
        {jobs.length} jobs
      </p>
      <table>
        <tbody>
          {jobs.map((j) => (
            <tr
              key={j.id}
              data-job-id={j.id}
              data-status={j.status ?? ""}
              data-percent={j.progress?.percent ?? ""}
              data-items={JSON.stringify(j.items)}
              data-result={JSON.stringify(j.result)}
              data-snapshot={j.job ? j.job.status : ""}
            >
              <td>{j.job?.kind}</td>
              <td>{j.status}</td>
              <td>{j.items.length} items</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function Job({ id }: { id: string }) {
  const { status, progress, items, result, connected, job } = useJob(id);
  return (
    <section
      id="job"
      data-status={status ?? ""}
      data-connected={String(connected)}
      data-percent={progress?.percent ?? ""}
      data-result={JSON.stringify(result)}
      data-finished={job?.finished_at ?? ""}
    >
      <progress value={progress?.percent ?? 0} max={100} />
      <ol id="items">
        {items.map((item, i) => (
          <li key={i}>{JSON.stringify(item)}</li>
        ))}
      </ol>
    </section>
  );
}

function App() {
  const params = new URLSearchParams(location.search);
  const [shown, setShown] = useState(true);
  const id = params.get("job");
  return (
    <HeraldProvider client={herald}>
      <button id="unmount" onClick={() => setShown(false)}>
        unmount
      </button>
      {shown && (id ? <Job id={id} /> : <Jobs />)}
      {!shown && <p id="unmounted">unmounted</p>}
    </HeraldProvider>
  );
}

createRoot(document.getElementById("root")!).render(<App />);
