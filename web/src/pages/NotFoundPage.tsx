import { Link } from "react-router";

export default function NotFoundPage() {
  return (
    <main className="mx-auto max-w-md p-6">
      <h1 className="text-xl font-semibold">Page not found</h1>
      <p className="mt-2">There is nothing at this address.</p>
      <Link className="mt-4 inline-block text-blue-700 underline" to="/">
        Go to the start page
      </Link>
    </main>
  );
}
