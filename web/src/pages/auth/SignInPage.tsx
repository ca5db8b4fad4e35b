export default function SignInPage() {
  return <h1 className="text-xl font-semibold">Sign in</h1>;
}
