export default function TradePage() {
  return <h1 className="text-xl font-semibold">Trade</h1>;
}
